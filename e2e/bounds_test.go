package e2e

// How long the edge holds a client that says nothing, too little, or
// says it slowly: default deny closes at once (an address no app holds)
// or within the matching timeout (a shared address), and a TLS handshake
// or an HTTP request's header that trickles in is cut at the edge's
// handshake bound. The bounds asserted are generous: these are
// behaviours (closed within seconds, not held for a minute), not speeds.

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

var boundsWeb = testMachine{"0000000000b601", "iad", "127.0.61.1"}

// boundsEdge: web serves http and tls http, secure tls, db pg_tls; the
// site block is the README's.
const boundsEdge = `{
	admin %[1]s
	persist_config off
	skip_install_trust
	storage file_system %[2]s
	fly {
		region iad
		base_domain %[3]s
		app web {
			service %[4]s {
				port %[5]s http {
					force_https
				}
				port %[6]s tls http
			}
			machine %[9]s iad %[10]s
		}
		app secure {
			service %[4]s {
				port %[7]s tls
			}
			machine 0000000000b602 iad 127.0.61.2
		}
		app db {
			service 5432 {
				port %[8]s pg_tls
			}
			machine 0000000000b603 iad 127.0.61.3
		}
	}
	fly_ips {
		shared_v4 ` + sharedV4 + `
		v4 ` + v4Pool + `
		auto_allocate off
		http_port %[5]s
		https_port %[6]s
	}
	fly_edge {
		ports %[5]s %[6]s %[7]s %[8]s
		issuer internal
	}
	servers fly/edge:80 {
		timeouts {
			read_header 10s
		}
	}
}
http:// {
	bind fly/edge
	@app fly_app
	handle @app {
		force_https
		fly_headers
		reverse_proxy {
			dynamic fly
			lb_policy fly
			transport fly
		}
	}
	handle {
		abort
	}
}
`

type boundsSetup struct {
	httpPort, httpsPort, tlsPort, pgPort string
	domain, webV4, secureV4              string
}

func startBoundsEdge(t *testing.T) *boundsSetup {
	t.Helper()
	requireCaddy(t)
	edgeCount++
	s := &boundsSetup{httpPort: freePort(), httpsPort: freePort(), tlsPort: freePort(), pgPort: freePort(),
		domain: fmt.Sprintf("bounds-%d.test", edgeCount)}
	machinePort := freePort()
	startMachines(t, machinePort, boundsWeb)
	mustLoad(t, fmt.Sprintf(boundsEdge, adminAddr, t.TempDir(), s.domain, machinePort, s.httpPort, s.httpsPort, s.tlsPort, s.pgPort, boundsWeb.id, boundsWeb.ip))
	allocate(t, adminAddr, "web", "shared_v4")
	allocate(t, adminAddr, "secure", "shared_v4")
	s.webV4 = allocate(t, adminAddr, "web", "v4")
	s.secureV4 = allocate(t, adminAddr, "secure", "v4")
	return s
}

// heldFor is what a probe saw: how long the edge kept the connection
// open, and what it wrote.
type heldFor struct {
	d      time.Duration
	got    []byte
	closed bool // false: still open when the probe gave up
}

// probe connects to addr, writes each of chunks in turn, every gap
// apart, and reads until the edge closes the connection or limit passes.
func probe(addr string, chunks [][]byte, gap, limit time.Duration, setup func(net.Conn) (net.Conn, error)) heldFor {
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return heldFor{got: []byte("dial: " + err.Error()), closed: true}
	}
	defer c.Close()
	var conn net.Conn = c
	if setup != nil {
		if conn, err = setup(c); err != nil {
			return heldFor{d: time.Since(start), got: []byte("setup: " + err.Error()), closed: true}
		}
		start = time.Now()
	}
	conn.SetReadDeadline(start.Add(limit))
	done := make(chan struct{})
	go func() {
		for i, b := range chunks {
			if i > 0 {
				select {
				case <-done:
					return
				case <-time.After(gap):
				}
			}
			if _, err := conn.Write(b); err != nil {
				return
			}
		}
	}()
	var got bytes.Buffer
	buf := make([]byte, 4096)
	var h heldFor
	for {
		n, err := conn.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			var ne net.Error
			h.closed = !(errorAs(err, &ne) && ne.Timeout())
			break
		}
	}
	close(done)
	h.d, h.got = time.Since(start), got.Bytes()
	return h
}

func errorAs(err error, target *net.Error) bool {
	ne, ok := err.(net.Error)
	if ok {
		*target = ne
	}
	return ok
}

// bytewise splits b into one-byte chunks.
func bytewise(b []byte) [][]byte {
	out := make([][]byte, len(b))
	for i := range b {
		out[i] = b[i : i+1]
	}
	return out
}

// helloFor returns the first flight of a TLS client naming server.
func helloFor(t *testing.T, server string) []byte {
	t.Helper()
	c, s := net.Pipe()
	defer s.Close()
	go func() {
		tls.Client(c, &tls.Config{ServerName: server, InsecureSkipVerify: true}).Handshake()
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

type boundsCase struct {
	name   string
	addr   string
	chunks [][]byte
	gap    time.Duration
	setup  func(net.Conn) (net.Conn, error)
	within time.Duration
	answer string // "" for nothing written back, "*" for anything, else a prefix of the answer
}

// runBounds runs the cases at once and checks each was closed within
// its bound and answered as it says.
func runBounds(t *testing.T, limit time.Duration, cases []boundsCase) {
	t.Helper()
	results := make([]heldFor, len(cases))
	var wg sync.WaitGroup
	for i, tc := range cases {
		wg.Go(func() { results[i] = probe(tc.addr, tc.chunks, tc.gap, limit, tc.setup) })
	}
	wg.Wait()
	for i, tc := range cases {
		h := results[i]
		t.Logf("%s: closed %v after %v, answered %q", tc.name, h.closed, h.d.Round(100*time.Millisecond), h.got)
		if !h.closed || h.d > tc.within {
			t.Errorf("%s: held %v (closed %v), want closed within %v", tc.name, h.d.Round(100*time.Millisecond), h.closed, tc.within)
		}
		if tc.answer == "" && len(h.got) > 0 || tc.answer != "" && tc.answer != "*" && !strings.HasPrefix(string(h.got), tc.answer) {
			t.Errorf("%s: answered %q, want %q", tc.name, h.got, tc.answer)
		}
	}
}

var sslRequestMsg = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}

// TestDefaultDenyCloses: a connection to an address no app holds is
// closed at once, whatever it sends or does not send (a PostgreSQL
// SSLRequest gets no HTTP 400); on the shared address, one that is not
// TLS, HTTP nor an SSLRequest within the matching timeout (3s) is closed
// too, and plain HTTP still reaches the site.
func TestDefaultDenyCloses(t *testing.T) {
	s := startBoundsEdge(t)
	free := "127.30.0.250" // a free address of the dedicated pool
	runBounds(t, 30*time.Second, []boundsCase{
		{name: "address of no app, nothing sent", addr: net.JoinHostPort("127.0.0.1", s.httpPort), within: 2 * time.Second},
		{name: "free pool address, nothing sent", addr: net.JoinHostPort(free, s.httpsPort), within: 2 * time.Second},
		{name: "free pool address, SSLRequest", addr: net.JoinHostPort(free, s.pgPort), chunks: [][]byte{sslRequestMsg}, within: 2 * time.Second},
		{name: "address of no app, partial request", addr: net.JoinHostPort("127.0.0.1", s.httpPort), chunks: [][]byte{[]byte("GET / HTTP/1.1\r\nHost: web." + s.domain)}, within: 2 * time.Second},
		{name: "address of no app, whole request", addr: net.JoinHostPort("127.0.0.1", s.httpPort), chunks: [][]byte{[]byte("GET / HTTP/1.1\r\nHost: web." + s.domain + "\r\n\r\n")}, within: 2 * time.Second},
		{name: "shared address, nothing sent", addr: net.JoinHostPort(sharedV4, s.httpPort), within: 10 * time.Second},
		{name: "shared address, neither TLS, HTTP nor SSLRequest", addr: net.JoinHostPort(sharedV4, s.httpPort), chunks: [][]byte{[]byte("\x01\x02\x03\x04 hello there\r\n")}, within: 10 * time.Second},
		{name: "shared address, request line never ends", addr: net.JoinHostPort(sharedV4, s.httpPort), chunks: [][]byte{[]byte("GET /index.html")}, within: 10 * time.Second},
		{name: "shared address, plain HTTP", addr: net.JoinHostPort(sharedV4, s.httpPort), chunks: [][]byte{[]byte("GET /x HTTP/1.1\r\nHost: web." + s.domain + "\r\nConnection: close\r\n\r\n")}, within: 10 * time.Second, answer: "HTTP/1.1 301 "},
	})
}

// TestSlowClientsBounded: a TLS client that sends its ClientHello a byte
// every 2 seconds, or its request's header after the handshake, and a
// plain HTTP client that sends its header so, are closed within the
// edge's handshake bound (10s, after the matching timeout), not held for
// a minute. (The HTTP server answers a header cut short with 400.)
func TestSlowClientsBounded(t *testing.T) {
	s := startBoundsEdge(t)
	within := 20 * time.Second // 3s matching + 10s handshake or header, and slack
	webHello := helloFor(t, "web."+s.domain)
	header := []byte("Host: web." + s.domain + "\r\nUser-Agent: slow\r\nAccept: */*\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n")
	handshake := func(c net.Conn) (net.Conn, error) {
		tc := tls.Client(c, &tls.Config{ServerName: "web." + s.domain, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			return nil, err
		}
		tc.SetDeadline(time.Time{})
		return tc, nil
	}
	runBounds(t, 40*time.Second, []boundsCase{
		{name: "ClientHello, web's dedicated address (tls http)", addr: net.JoinHostPort(s.webV4, s.httpsPort), chunks: bytewise(webHello), gap: 2 * time.Second, within: within},
		{name: "ClientHello, secure's dedicated address (tls)", addr: net.JoinHostPort(s.secureV4, s.tlsPort), chunks: bytewise(helloFor(t, "secure."+s.domain)), gap: 2 * time.Second, within: within},
		{name: "ClientHello, shared address", addr: net.JoinHostPort(sharedV4, s.httpsPort), chunks: bytewise(webHello), gap: 2 * time.Second, within: within},
		{name: "request header over TLS, shared address", addr: net.JoinHostPort(sharedV4, s.httpsPort), setup: handshake,
			chunks: append([][]byte{[]byte("GET / HTTP/1.1\r\n")}, bytewise(header)...), gap: 2 * time.Second, within: within, answer: "*"},
		{name: "request header over TLS, web's dedicated address", addr: net.JoinHostPort(s.webV4, s.httpsPort), setup: handshake,
			chunks: append([][]byte{[]byte("GET / HTTP/1.1\r\n")}, bytewise(header)...), gap: 2 * time.Second, within: within, answer: "*"},
		{name: "plain request header, shared address", addr: net.JoinHostPort(sharedV4, s.httpPort),
			chunks: append([][]byte{[]byte("GET / HTTP/1.1\r\n")}, bytewise(header)...), gap: 2 * time.Second, within: within, answer: "*"},
	})
}
