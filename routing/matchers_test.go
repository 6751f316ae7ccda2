package routing

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"
)

// clientHello returns the first bytes a TLS client sends for server name
// name.
func clientHello(t testing.TB, name string) []byte {
	t.Helper()
	c, s := net.Pipe()
	defer s.Close()
	go func() {
		tls.Client(c, &tls.Config{ServerName: name, InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}}).Handshake()
		c.Close()
	}()
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	var buf bytes.Buffer
	b := make([]byte, 4096)
	for buf.Len() < 5 || buf.Len() < 5+(int(buf.Bytes()[3])<<8|int(buf.Bytes()[4])) {
		n, err := s.Read(b)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b[:n])
	}
	return buf.Bytes()
}

// TestMatchL4SharedAddress: on a shared address the layer 4 matcher
// takes the app from the ClientHello's server name, and leaves anything
// that is not a ClientHello naming an app of the address alone.
func TestMatchL4SharedAddress(t *testing.T) {
	shared := netip.MustParseAddr("127.20.0.1")
	fly := &App{BaseDomain: "edge.test", Apps: map[string]*Application{}}
	for _, name := range []string{"app0", "app1"} {
		fly.Apps[name] = &Application{
			Services: []*Service{{InternalPort: 8080, Ports: []*Port{{Port: 443, Handlers: []string{"tls", "http"}}}}},
		}
	}
	if err := provision(t, fly); err != nil {
		t.Fatal(err)
	}
	fly.RouteByAddress([]netip.Addr{shared})
	if err := fly.SetLive("app0", &LiveApp{Shared: []netip.Addr{shared}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	// the apps serve tls+http on 443, which the matcher leaves to the
	// HTTP server: this test looks at what it learned before deciding
	m := &MatchL4{fly: fly}
	if err := m.hello.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", shared.String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		name string
		in   []byte
		want string // the server name the matcher records, "" for none
	}{
		{"client hello", clientHello(t, "App0.Edge.TEST."), "app0.edge.test"},
		{"no sni", clientHello(t, ""), ""},
		{"plain http", []byte("GET / HTTP/1.1\r\nHost: app0.edge.test\r\n\r\n"), ""},
		{"postgres ssl request", []byte{0, 0, 0, 8, 4, 210, 22, 47}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(tc.in)
			c.(*net.TCPConn).CloseWrite()
			sc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			sc.SetDeadline(time.Now().Add(5 * time.Second))
			cx := layer4.WrapConnection(sc, make([]byte, 0, 4096), zap.NewNop())
			if ok, _ := m.Match(cx); ok {
				t.Error("matched a connection for a tls+http port")
			}
			got, _ := cx.GetVar(serverNameVarKey).(string)
			if got != tc.want {
				t.Errorf("server name %q, want %q", got, tc.want)
			}
		})
	}
}

// TestHTTPRequestLine: what the edge's matcher takes for HTTP on a
// shared address, and when it waits for more.
func TestHTTPRequestLine(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
		more bool
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n", true, false},
		{"OPTIONS * HTTP/1.0\n", true, false},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", true, false},
		{"GET /" + strings.Repeat("a", maxRequestLine), true, false}, // the HTTP server answers it
		{"G", false, true},
		{"GET /index.html", false, true},
		{"GET / HTTP/1.1", false, true},
		{"GET / FTP/1.0\r\n", false, false},
		{"GET /\r\n", false, false},
		{"\x01\x02\x03 hello\r\n", false, false},
		{" GET / HTTP/1.1\r\n", false, false},
		{"GET\t/ HTTP/1.1\r\n", false, false},
		{strings.Repeat("A", 40), false, false},
	} {
		got, err := httpRequestLine([]byte(tc.in))
		if more := errors.Is(err, layer4.ErrConsumedAllPrefetchedBytes); got != tc.want || more != tc.more {
			t.Errorf("httpRequestLine(%.30q) = %v, %v; want %v, more %v", tc.in, got, err, tc.want, tc.more)
		}
	}
}

// TestMatchEdgeDenies: the edge's matcher denies a connection to an
// address no app holds before reading anything, and on a shared address
// one whose first bytes are neither TLS, HTTP nor an SSLRequest; it
// leaves HTTP and a ClientHello naming no app to the HTTP server.
func TestMatchEdgeDenies(t *testing.T) {
	shared := netip.MustParseAddr("127.20.0.1")
	fly := &App{BaseDomain: "edge.test", Apps: map[string]*Application{
		"app0": {Services: []*Service{{InternalPort: 8080, Ports: []*Port{{Port: 443, Handlers: []string{"tls", "http"}}}}}},
	}}
	if err := provision(t, fly); err != nil {
		t.Fatal(err)
	}
	fly.RouteByAddress([]netip.Addr{shared})
	if err := fly.SetLive("app0", &LiveApp{Shared: []netip.Addr{shared}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	m := &MatchL4{fly: fly, Edge: true}
	if err := m.hello.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		addr   string
		in     []byte
		denied bool
		more   bool
	}{
		{"address of no app, nothing sent", "127.0.0.1", nil, true, false},
		{"address of no app, HTTP", "127.0.0.1", []byte("GET / HTTP/1.1\r\nHost: app0.edge.test\r\n\r\n"), true, false},
		{"address of no app, SSLRequest", "127.0.0.1", sslRequest[:], true, false},
		{"shared, nothing sent", shared.String(), nil, false, true},
		{"shared, HTTP", shared.String(), []byte("GET / HTTP/1.1\r\nHost: app0.edge.test\r\n\r\n"), false, false},
		{"shared, request line so far", shared.String(), []byte("GET /index.html"), false, true},
		{"shared, neither TLS, HTTP nor SSLRequest", shared.String(), []byte("\x01\x02\x03\x04 hello\r\n"), true, false},
		{"shared, a PostgreSQL startup without SSL", shared.String(), []byte{0, 0, 0, 9, 0, 3, 0, 0, 0}, true, false},
		{"shared, no app for the name", shared.String(), clientHello(t, "nobody.edge.test"), false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", tc.addr+":0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			sc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			// the bytes as caddy-l4 would have prefetched them
			cx := layer4.WrapConnection(sc, append(make([]byte, 0, 4096), tc.in...), zap.NewNop())
			ok, err := m.Match(cx)
			if ok {
				t.Fatal("matched")
			}
			if more := errors.Is(err, layer4.ErrConsumedAllPrefetchedBytes); more != tc.more {
				t.Errorf("error %v; want more bytes asked for: %v", err, tc.more)
			}
			if denied := Denied(cx); (denied != nil) != tc.denied || denied != nil && !errors.Is(denied, ErrDenied) {
				t.Errorf("Denied: %v; want denied %v", denied, tc.denied)
			}
		})
	}
}

// TestMatchEdgeDeniesPort: without IP pools the port plays the part of
// the address: a connection to a port no app serves is denied before
// anything is read.
func TestMatchEdgeDeniesPort(t *testing.T) {
	fly := &App{BaseDomain: "edge.test", Apps: map[string]*Application{
		"app0": {Services: []*Service{{InternalPort: 8080, Ports: []*Port{{Port: 443, Handlers: []string{"tls", "http"}}}}}},
	}}
	if err := provision(t, fly); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0") // a port no app serves
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	m := &MatchL4{fly: fly, Edge: true}
	cx := layer4.WrapConnection(sc, make([]byte, 0, 4096), zap.NewNop())
	if ok, err := m.Match(cx); ok || err != nil {
		t.Fatalf("Match: %v, %v; want false, nil (nothing read)", ok, err)
	}
	if err := Denied(cx); !errors.Is(err, ErrDenied) {
		t.Errorf("Denied: %v; want ErrDenied", err)
	}
}
