package routing

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"net/netip"
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
