package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
)

// limitsEdge has an app per kind of limit: web (requests, soft 2, hard
// 3, machines in iad and lhr), conns (HTTP with type connections, hard
// 2), raw (TCP, hard 2) and db (pg_tls, hard 1), and a queue timeout of
// 1s.
const limitsEdge = `{
	admin %[1]s
	persist_config off
	skip_install_trust
	storage file_system %[2]s
	fly {
		region iad
		base_domain %[3]s
		queue_timeout 1s
		app web {
			service %[4]s {
				port %[5]s http
				concurrency requests 2 3
			}
			machine 0000000000f101 iad 127.0.63.1
			machine 0000000000f102 lhr 127.0.63.2
		}
		app conns {
			service %[4]s {
				port %[5]s http
				concurrency connections 1 2
			}
			machine 0000000000f103 iad 127.0.63.3
		}
		app raw {
			service %[6]s {
				port %[7]s
				concurrency connections 1 2
			}
			machine 0000000000f104 iad 127.0.63.4
		}
		app db {
			service 5432 {
				port %[8]s pg_tls
				concurrency connections 1 1
			}
			machine 0000000000f105 iad 127.0.0.1
		}
	}
	fly_ips {
		shared_v4 ` + sharedV4 + `
		v4 ` + v4Pool + `
		auto_allocate off
		http_port %[5]s
	}
	fly_edge {
		ports %[5]s %[7]s %[8]s
		issuer internal
	}
}
http:// {
	bind fly/edge
	@app fly_app
	handle @app {
		fly_headers
		reverse_proxy {
			dynamic fly
			lb_policy fly
		}
	}
	handle {
		abort
	}
}
`

// countingMachine is an HTTP machine that counts what it has at once:
// requests in flight and open connections, with their peaks. A request
// with X-Hold waits until the test releases one; others wait X-Sleep.
type countingMachine struct {
	id                   string
	inflight, peak       atomic.Int64
	open, peakOpen, news atomic.Int64
	arrived              chan struct{}
	release              chan struct{}
}

func raise(peak *atomic.Int64, n int64) {
	for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
	}
}

func startCountingMachine(t *testing.T, id, addr string) *countingMachine {
	t.Helper()
	m := &countingMachine{id: id, arrived: make(chan struct{}, 100), release: make(chan struct{}, 100)}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			raise(&m.peak, m.inflight.Add(1))
			defer m.inflight.Add(-1)
			if r.Header.Get("X-Hold") != "" {
				m.arrived <- struct{}{}
				select {
				case <-m.release:
				case <-time.After(10 * time.Second):
				}
			} else if d, err := time.ParseDuration(r.Header.Get("X-Sleep")); err == nil {
				time.Sleep(d)
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(testkit.Seen{Machine: id})
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				m.news.Add(1)
				raise(&m.peakOpen, m.open.Add(1))
			case http.StateClosed, http.StateHijacked:
				m.open.Add(-1)
			}
		},
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return m
}

// heldGet sends a request the machine holds until released; its answer
// (machine ID, or status and body) arrives on the returned channel.
func heldGet(c *http.Client, url string) <-chan string {
	out := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("X-Hold", "1")
		resp, err := c.Do(req)
		if err != nil {
			out <- err.Error()
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var s testkit.Seen
		if json.Unmarshal(body, &s) == nil && s.Machine != "" {
			out <- s.Machine
			return
		}
		out <- fmt.Sprintf("%d %s", resp.StatusCode, body)
	}()
	return out
}

func waitArrived(t *testing.T, m *countingMachine) {
	t.Helper()
	select {
	case <-m.arrived:
	case <-time.After(5 * time.Second):
		t.Fatalf("no request arrived at machine %s", m.id)
	}
}

// TestConcurrencyLimits drives concurrent requests and connections
// through a real Caddy and counts what each machine saw: soft_limit
// spills over to the next region, no machine ever has more than
// hard_limit, a request that finds every machine full waits for a slot
// and gets a readable 503 after the queue timeout, and the same for TCP
// (a close) and PostgreSQL (an ErrorResponse).
func TestConcurrencyLimits(t *testing.T) {
	requireCaddy(t)
	httpPort, tcpPort, pgPort, machinePort, sinkPort := freePort(), freePort(), freePort(), freePort(), freePort()
	storage := t.TempDir()
	edgeCount++
	domain := fmt.Sprintf("limits-%d.test", edgeCount)
	iad := startCountingMachine(t, "0000000000f101", "127.0.63.1:"+machinePort)
	lhr := startCountingMachine(t, "0000000000f102", "127.0.63.2:"+machinePort)
	conns := startCountingMachine(t, "0000000000f103", "127.0.63.3:"+machinePort)
	mustLoad(t, fmt.Sprintf(limitsEdge, adminAddr, storage, domain, machinePort, httpPort, sinkPort, tcpPort, pgPort))
	checkOwnListeners(t, mustAtoi(httpPort), mustAtoi(tcpPort), mustAtoi(pgPort))
	allocate(t, adminAddr, "web", "shared_v4")
	allocate(t, adminAddr, "conns", "shared_v4")
	rawV4 := allocate(t, adminAddr, "raw", "v4")
	dbV4 := allocate(t, adminAddr, "db", "v4")
	c := clientVia(nil, sharedV4, false)
	c.Transport.(*http.Transport).MaxConnsPerHost = 0
	webURL := "http://web." + domain + ":" + httpPort + "/"

	t.Run("soft limit, hard limit, queue", func(t *testing.T) {
		var held []<-chan string
		hold := func(want *countingMachine) {
			t.Helper()
			held = append(held, heldGet(c, webURL))
			waitArrived(t, want)
		}
		// iad is the edge's region: it takes work up to its soft limit (2),
		// then lhr up to its own, then the nearest up to the hard limit (3)
		hold(iad)
		hold(iad)
		hold(lhr)
		hold(lhr)
		hold(iad)
		hold(lhr)
		if iad.inflight.Load() != 3 || lhr.inflight.Load() != 3 {
			t.Fatalf("in flight: iad %d, lhr %d; want 3 and 3", iad.inflight.Load(), lhr.inflight.Load())
		}
		// every machine at its hard limit: the next request waits 1s, then 503
		start := time.Now()
		resp, body, s := get(t, c, webURL, nil)
		waited := time.Since(start)
		if s != nil || resp.StatusCode != http.StatusServiceUnavailable || !strings.HasPrefix(body, "PR05: every machine of app web is at its concurrency hard limit") {
			t.Fatalf("with every machine full: %d %q (machine %v)", resp.StatusCode, body, s)
		}
		if waited < 900*time.Millisecond || waited > 5*time.Second {
			t.Errorf("the full queue answered after %s; want the queue timeout, 1s", waited)
		}
		req, _ := http.NewRequest(http.MethodGet, webURL, nil)
		req.Header.Set("Accept", "application/json")
		if resp, err := c.Do(req); err != nil {
			t.Fatal(err)
		} else {
			var e struct {
				Code      string `json:"code"`
				RequestID string `json:"request_id"`
			}
			json.NewDecoder(resp.Body).Decode(&e)
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable || e.Code != "PR05" || e.RequestID == "" {
				t.Errorf("JSON error: %d %+v", resp.StatusCode, e)
			}
		}
		// a waiting request gets the first slot given back
		queued := queuedAtEdge(t)
		waiting := heldGet(c, webURL)
		waitQueued(t, queued+1)
		iad.release <- struct{}{}
		waitArrived(t, iad)
		for range 6 {
			iad.release <- struct{}{}
			lhr.release <- struct{}{}
		}
		for _, h := range append(held, waiting) {
			if got := <-h; got != iad.id && got != lhr.id {
				t.Errorf("a held request got %q", got)
			}
		}
		drain(iad.release)
		drain(lhr.release)
	})

	t.Run("many clients never exceed the hard limit", func(t *testing.T) {
		iad.peak.Store(0)
		lhr.peak.Store(0)
		var ok, failed atomic.Int64
		var wg sync.WaitGroup
		for range 30 {
			wg.Go(func() {
				cl := clientVia(nil, sharedV4, false)
				defer cl.CloseIdleConnections()
				for range 10 {
					resp, _, s := get(t, cl, webURL, map[string]string{"X-Sleep": "5ms"})
					if s != nil {
						ok.Add(1)
					} else {
						failed.Add(1)
						t.Errorf("status %d", resp.StatusCode)
					}
				}
			})
		}
		wg.Wait()
		t.Logf("300 requests from 30 clients: %d answered, %d failed; peaks iad %d, lhr %d", ok.Load(), failed.Load(), iad.peak.Load(), lhr.peak.Load())
		if iad.peak.Load() > 3 || lhr.peak.Load() > 3 {
			t.Errorf("peak in flight: iad %d, lhr %d; hard limit 3", iad.peak.Load(), lhr.peak.Load())
		}
		if iad.peak.Load() < 3 || lhr.peak.Load() < 2 {
			t.Errorf("peak in flight: iad %d, lhr %d; with 30 clients both machines should fill", iad.peak.Load(), lhr.peak.Load())
		}
	})

	t.Run("type connections: a connection per request, at most hard_limit open", func(t *testing.T) {
		url := "http://conns." + domain + ":" + httpPort + "/"
		before, queued := conns.news.Load(), queuedAtEdge(t)
		var held []<-chan string
		for range 4 {
			held = append(held, heldGet(clientVia(nil, sharedV4, false), url))
		}
		waitArrived(t, conns)
		waitArrived(t, conns)
		waitQueued(t, queued+2) // the other two wait in the queue
		if n := conns.inflight.Load(); n != 2 {
			t.Fatalf("%d requests in flight on a machine with hard limit 2", n)
		}
		for range 4 {
			conns.release <- struct{}{}
		}
		for _, h := range held {
			if got := <-h; got != conns.id {
				t.Errorf("a request got %q", got)
			}
		}
		if conns.peakOpen.Load() > 2 || conns.peak.Load() > 2 {
			t.Errorf("peak open connections %d, requests %d; hard limit 2", conns.peakOpen.Load(), conns.peak.Load())
		}
		if n := conns.news.Load() - before; n != 4 {
			t.Errorf("4 requests came on %d connections; type connections wants one each", n)
		}
		waitFor(t, "the machine's connections to close", func() bool { return conns.open.Load() == 0 })
	})

	t.Run("tcp: at the hard limit a connection waits, then is closed", func(t *testing.T) {
		var open, peak atomic.Int64
		ln := testkit.Listen(t, "127.0.63.4:"+sinkPort)
		defer ln.Close()
		testkit.Serve(t, ln, func(cn net.Conn) {
			defer cn.Close()
			raise(&peak, open.Add(1))
			defer open.Add(-1)
			r := bufio.NewReader(cn)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				cn.Write([]byte(line))
			}
		})
		dial := func() (net.Conn, *bufio.Reader) {
			cn, err := net.DialTimeout("tcp", net.JoinHostPort(rawV4, tcpPort), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			cn.SetDeadline(time.Now().Add(10 * time.Second))
			return cn, bufio.NewReader(cn)
		}
		echo := func(cn net.Conn, r *bufio.Reader) error {
			if _, err := cn.Write([]byte("ping\n")); err != nil {
				return err
			}
			line, err := r.ReadString('\n')
			if err == nil && line != "ping\n" {
				err = fmt.Errorf("echo %q", line)
			}
			return err
		}
		a, ar := dial()
		defer a.Close()
		b, br := dial()
		defer b.Close()
		for _, p := range []struct {
			c net.Conn
			r *bufio.Reader
		}{{a, ar}, {b, br}} {
			if err := echo(p.c, p.r); err != nil {
				t.Fatal(err)
			}
		}
		third, tr := dial()
		defer third.Close()
		start := time.Now()
		if err := echo(third, tr); err == nil {
			t.Fatal("a third connection reached a machine with hard limit 2")
		}
		if waited := time.Since(start); waited < 900*time.Millisecond || waited > 5*time.Second {
			t.Errorf("the third connection was closed after %s; want the queue timeout, 1s", waited)
		}
		// a connection that waits gets the slot the first one gives back
		queued := queuedAtEdge(t)
		fourth, fr := dial()
		defer fourth.Close()
		fourth.Write([]byte("ping\n"))
		waitQueued(t, queued+1)
		a.Close()
		if line, err := fr.ReadString('\n'); err != nil || line != "ping\n" {
			t.Fatalf("the waiting connection: %q, %v", line, err)
		}
		if peak.Load() > 2 {
			t.Errorf("the machine had %d connections at once; hard limit 2", peak.Load())
		}
	})

	t.Run("pg_tls: an ErrorResponse at the hard limit", func(t *testing.T) {
		requirePostgres(t)
		rootFile := filepath.Join(t.TempDir(), "root.crt")
		os.WriteFile(rootFile, must(os.ReadFile(filepath.Join(storage, "pki", "authorities", "local", "root.crt"))), 0o600)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		dsn := fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=verify-ca sslrootcert=%s connect_timeout=5", dbV4, pgPort, rootFile)
		first, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatalf("pg_tls: %v", err)
		}
		defer first.Close(ctx)
		second, err := pgx.Connect(ctx, dsn)
		if err == nil {
			second.Close(ctx)
			t.Fatal("a second session reached a machine with hard limit 1")
		}
		if !strings.Contains(err.Error(), "PR05: every machine of app \"db\" is at its concurrency hard limit") || !strings.Contains(err.Error(), "53300") {
			t.Fatalf("second session: %v", err)
		}
		var one int
		if err := first.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
			t.Errorf("the first session: %d, %v", one, err)
		}
	})
}

// queuedAtEdge counts the requests and connections that wait in the
// shared Caddy's queues for a machine below its hard limit: in the
// goroutine dump of its admin endpoint, the goroutines blocked in the
// select of routing.Acquire.
func queuedAtEdge(t *testing.T) int {
	t.Helper()
	resp, err := adminClient.Get("http://" + adminAddr + "/debug/pprof/goroutine?debug=2")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	dump, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("the edge's goroutines: %d %v", resp.StatusCode, err)
	}
	n := 0
	for _, g := range strings.Split(string(dump), "\n\n") {
		state, stack, _ := strings.Cut(g, "\n")
		if strings.HasPrefix(state, "goroutine ") && strings.Contains(state, "[select") && strings.Contains(stack, "/routing.Acquire[") {
			n++
		}
	}
	return n
}

// waitQueued waits until n requests or connections wait in the edge's
// queues.
func waitQueued(t *testing.T, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d requests or connections to wait in the edge's queue", n), func() bool { return queuedAtEdge(t) >= n })
}

func drain(ch chan struct{}) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// tenantEdge is an edge routing by port: the victim's HTTP on one port
// (answered by the site), the attacker's TCP pass-through on another,
// to a machine that holds what it is given. %[4]s: more fly_edge
// options.
const tenantEdge = `{
	admin %[1]s
	persist_config off
	skip_install_trust
	fly {
		app victim {
			service 3000 {
				port %[2]s http
			}
			machine 148ed193b95189 iad 127.0.1.1
		}
		app attacker {
			service %[5]s {
				port %[3]s
			}
			machine 2a6c5e8f0b1d94 iad 127.0.0.1
		}
	}
	fly_ips {
		auto_allocate off
	}
	fly_edge {
		ports %[2]s %[3]s
		issuer internal
		%[4]s
	}
}

http:// {
	bind fly/edge
	respond "victim"
}
`

// holdingMachine accepts connections, echoes what they send and holds
// them until the client closes; it returns its port.
func holdingMachine(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return portOf("http://" + ln.Addr().String())
}

// idleConns opens n connections to addr from local address from and
// keeps them open until the test ends or closeAll is called; it returns
// how many the edge still holds after a moment (the others it closed).
func idleConns(t *testing.T, from, addr string, n int) (held int, closeAll func()) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 2 * time.Second}
	var conns []net.Conn
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			continue // the backlog is full: the edge is at its limit
		}
		conns = append(conns, c)
	}
	closeAll = func() {
		for _, c := range conns {
			c.Close()
		}
		conns = nil
	}
	t.Cleanup(closeAll)
	// a connection the edge closed reads EOF; one it holds, nothing
	// until the deadline (each read waits on its own: past a deadline, Go
	// does not look at the socket)
	var wg sync.WaitGroup
	var open atomic.Int64
	for _, c := range conns {
		wg.Go(func() {
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
				open.Add(1)
			}
			c.SetReadDeadline(time.Time{})
		})
	}
	wg.Wait()
	return int(open.Load()), closeAll
}

// echoes tells whether a connection to addr reaches the echoing machine
// (a connection the kernel completed but no one accepts does not).
func echoes(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return false
	}
	b := make([]byte, 4)
	_, err = io.ReadFull(c, b)
	return err == nil && string(b) == "ping"
}

// victimServes tells how many of n requests to the victim's port, each
// on a new connection, were answered.
func victimServes(url string, n int) int {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	ok := 0
	for range n {
		resp, err := c.Get(url)
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) == "victim" {
			ok++
		}
	}
	return ok
}

// TestTenantCannotStopAPort: one tenant's idle connections to its
// pass-through port neither stop the edge's ports nor take the victim's
// requests. With its descriptors run out on purpose (limits set above
// the open-file limit), the edge's ports serve again as soon as the
// connections close: a failed accept is retried, where the port used to
// stop accepting for good. With the default limits, derived from the
// open-file limit, one client's connections stop at its share and the
// victim keeps every request.
func TestTenantCannotStopAPort(t *testing.T) {
	requireCaddy(t)
	prlimit := requireTool(t, "prlimit")
	machine := holdingMachine(t)
	limited := func(nofile int) []string {
		return []string{prlimit, fmt.Sprintf("--nofile=%d:%d", nofile, nofile), "--"}
	}

	t.Run("descriptors run out", func(t *testing.T) {
		admin, web, tcp := freeAddr(), freePort(), freePort()
		p := startEdgeProcVia(t, "shortage", fmt.Sprintf(tenantEdge, admin, web, tcp, "max_connections 100000\n\t\tmax_connections_per_client 100000", machine), limited(400)...)
		if !p.started(t) {
			t.Fatalf("the edge did not start:\n%s", p.log)
		}
		checkOwnListeners(t, portNumber(t, web), portNumber(t, tcp))
		_, closeAll := idleConns(t, "127.0.0.2", "127.0.0.1:"+tcp, 400)
		waitUntil(t, "the edge to run out of descriptors", 10*time.Second, func() bool {
			return strings.Contains(p.log.String(), "too many open files")
		})
		closeAll()
		start := time.Now()
		waitUntil(t, "the victim's port to serve after the attack", 5*time.Second, func() bool {
			return victimServes("http://127.0.0.1:"+web+"/", 1) == 1
		})
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("the edge's log:\n%s", p.log)
			}
		})
		waitUntil(t, "the attacker's port to serve after the attack", 5*time.Second, func() bool {
			return echoes("127.0.0.1:" + tcp)
		})
		t.Logf("ports served again %v after the connections closed", time.Since(start).Round(time.Millisecond))
	})

	t.Run("default limits", func(t *testing.T) {
		admin, web, tcp := freeAddr(), freePort(), freePort()
		p := startEdgeProcVia(t, "limits", fmt.Sprintf(tenantEdge, admin, web, tcp, "", machine), limited(1000)...)
		if !p.started(t) {
			t.Fatalf("the edge did not start:\n%s", p.log)
		}
		held, _ := idleConns(t, "127.0.0.2", "127.0.0.1:"+tcp, 400)
		// 1,000 descriptors: 256 kept free, 2 listeners; 247
		// connections (three descriptors each), 64 per client
		if held != 64 {
			t.Errorf("the edge holds %d of one client's connections, want its share, 64\n%s", held, p.log)
		}
		if ok := victimServes("http://127.0.0.1:"+web+"/", 50); ok != 50 {
			t.Errorf("the victim got %d of 50 answers while one client held its share", ok)
		}
		if strings.Contains(p.log.String(), "too many open files") {
			t.Errorf("the edge ran out of descriptors:\n%s", p.log)
		}
		if !strings.Contains(p.log.String(), "connections refused: the edge holds max_connections, or a client its share") {
			t.Errorf("the operator is not told of the refusals:\n%s", p.log)
		}
	})
}

// h2Edge serves one app over TLS and HTTP on port %[2]s, its machine on
// %[3]s, with max_connections 3.
const h2Edge = `{
	admin off
	persist_config off
	skip_install_trust
	storage file_system %[1]s
	fly {
		base_domain h2.test
		app web {
			service %[3]s {
				port %[2]s tls http
			}
			machine 148ed193b95189 iad 127.0.0.1
		}
	}
	fly_ips {
		shared_v4 127.0.0.1
		https_port %[2]s
	}
	fly_edge {
		ports %[2]s
		issuer internal
		max_connections 3
	}
}

http:// {
	bind fly/edge
	@app fly_app
	handle @app {
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

// TestHTTPMachineConnsBounded: one HTTP/2 connection carries many
// requests at once, each of which may need a connection to the machine;
// the edge holds no more of those than max_connections (they took one
// descriptor each without bound: one client connection could hold
// thousands), and the requests beyond it fail at once.
func TestHTTPMachineConnsBounded(t *testing.T) {
	requireCaddy(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() { io.Copy(io.Discard, c); c.Close() }() // never answers
		}
	}()
	port := freePort()
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(fmt.Sprintf(h2Edge, t.TempDir(), port, portOf("http://"+ln.Addr().String()))), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	defer caddy.Stop()
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, ServerName: "web.h2.test"}, ForceAttemptHTTP2: true, MaxConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 3 * time.Second}
	var wg sync.WaitGroup
	var h2, failedFast atomic.Int64
	for range 60 {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodGet, "https://127.0.0.1:"+port+"/", nil)
			req.Host = "web.h2.test"
			start := time.Now()
			resp, err := c.Do(req)
			if err != nil {
				return // held by the machine until the client's timeout
			}
			resp.Body.Close()
			if resp.ProtoMajor == 2 {
				h2.Add(1)
			}
			if resp.StatusCode == http.StatusBadGateway && time.Since(start) < 2*time.Second {
				failedFast.Add(1)
			}
		})
	}
	wg.Wait()
	if n := accepted.Load(); n > 3 {
		t.Errorf("one client connection made the edge hold %d connections to the machine, want at most 3 (max_connections)", n)
	}
	if h2.Load() == 0 || failedFast.Load() < 50 {
		t.Errorf("%d answers over HTTP/2, %d failed at once with 502; want the requests beyond the bound to fail at once over the one HTTP/2 connection", h2.Load(), failedFast.Load())
	}
}
