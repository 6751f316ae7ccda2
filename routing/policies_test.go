package routing

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/mholt/caddy-l4/layer4"
	"github.com/mholt/caddy-l4/modules/l4proxy"
	"go.uber.org/zap"
)

// request is a request to host that arrived on local, with Caddy's
// request variables.
func request(host, local string, hdr map[string]string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "http://"+host+"/", nil)
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(local))))
	return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), httptest.NewRecorder(), &caddyhttp.Server{})
}

func newFlySelection(t *testing.T) *FlySelection {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	s := new(FlySelection)
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestFlyUpstreamsAndSelection: the upstream source gives the machines
// of the request's app and port, nearest first; the policy picks by the
// Fly-* headers and marks a passed-over preferred instance.
func TestFlyUpstreamsAndSelection(t *testing.T) {
	a := demoApp(t)
	u := &FlyUpstreams{app: a}
	s := newFlySelection(t)
	r := request("web.edge.test", "127.0.0.1:443", nil)
	ups, err := u.GetUpstreams(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(ups) != 7 || ups[0].Dial != "10.0.0.1:8080" && ups[0].Dial != "10.0.0.2:8080" {
		t.Fatalf("upstreams %d, first %s; want web's 7 machines, iad first", len(ups), ups[0].Dial)
	}
	if _, err := u.GetUpstreams(request("nobody.edge.test", "127.0.0.1:8443", nil)); err == nil {
		t.Error("upstreams for a port no app serves")
	}
	pick := func(hdr map[string]string) (string, *http.Request) {
		r := request("web.edge.test", "127.0.0.1:443", hdr)
		ups, err := u.GetUpstreams(r)
		if err != nil {
			t.Fatal(err)
		}
		for _, up := range ups {
			up.Host = new(reverseproxy.Host) // as reverse_proxy provisions them
		}
		up := s.Select(ups, r, httptest.NewRecorder())
		if up == nil {
			return "", r
		}
		return up.Dial, r
	}
	if got, _ := pick(map[string]string{"Fly-Prefer-Region": "syd"}); got != "10.0.4.1:8080" {
		t.Errorf("Fly-Prefer-Region syd: %s", got)
	}
	if got, _ := pick(map[string]string{"Fly-Force-Instance-Id": "000000000000c1"}); got != "10.0.2.1:8080" {
		t.Errorf("Fly-Force-Instance-Id: %s", got)
	}
	got, r := pick(map[string]string{"Fly-Prefer-Instance-Id": "000000000000f1"}) // stopped
	if got == "10.0.5.1:8080" || r.Header.Get(HeaderPreferredUnavailable) != "000000000000f1" {
		t.Errorf("stopped preferred instance: %s, header %q", got, r.Header.Get(HeaderPreferredUnavailable))
	}
	if got, r := pick(map[string]string{"Fly-Force-Instance-Id": "00000000000bad"}); got != "" {
		t.Errorf("unknown forced instance: %s", got)
	} else if o, ok := Unroutable(r); !ok || o != ForcedUnknown {
		t.Errorf("unknown forced instance recorded %v, %t", o, ok)
	}
	// upstreams of another source: the fallback policy chooses
	other := []*reverseproxy.Upstream{{Dial: "192.0.2.1:80", Host: new(reverseproxy.Host)}}
	if up := s.Select(other, request("x", "127.0.0.1:1", nil), httptest.NewRecorder()); up == nil || up.Dial != "192.0.2.1:80" {
		t.Errorf("fallback for foreign upstreams: %v", up)
	}
}

// TestFlyTransport: a service with h2_backend gets h2c, any other
// HTTP/1.1, whatever the client spoke.
func TestFlyTransport(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(r.Proto))
	}))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	defer srv.Close()
	ap := netip.MustParseAddrPort(srv.Listener.Addr().String())
	svc := func(h2 bool) []*Service {
		return []*Service{{InternalPort: int(ap.Port()), HTTPOptions: &HTTPOptions{H2Backend: h2}, Ports: []*Port{{Port: 80, Handlers: []string{"http"}}}}}
	}
	m := func(id string) []*Machine { return []*Machine{{ID: id, Region: "iad", Address: ap.Addr().String()}} }
	a := &App{Region: "iad", BaseDomain: "edge.test", Apps: map[string]*Application{
		"h1": {Services: svc(false), Machines: m("0000000000aa01")},
		"h2": {Services: svc(true), Machines: m("0000000000aa02")},
	}}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	tr := newFlyTransport(t)
	for app, want := range map[string]string{"h1": "HTTP/1.1", "h2": "HTTP/2.0"} {
		r := request(app+".edge.test", "127.0.0.1:80", nil)
		if _, err := a.RouteForRequest(r); err != nil {
			t.Fatal(err)
		}
		r.URL.Scheme, r.URL.Host, r.RequestURI = "http", srv.Listener.Addr().String(), ""
		resp, err := tr.RoundTrip(r)
		if err != nil {
			t.Fatal(err)
		}
		var b [16]byte
		n, _ := resp.Body.Read(b[:])
		resp.Body.Close()
		if string(b[:n]) != want {
			t.Errorf("%s: machine spoke %s, want %s", app, b[:n], want)
		}
	}
}

// TestFlyL4Selection: of caddy-l4's upstreams, only the app's machines
// are chosen, the nearest first, and not one that refused lately.
func TestFlyL4Selection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a := &App{Region: "iad", BaseDomain: "edge.test", Apps: map[string]*Application{"db": {
		Services: []*Service{{InternalPort: 5432, Ports: []*Port{{Port: ln.Addr().(*net.TCPAddr).Port}}}},
		Machines: []*Machine{
			{ID: "000000000000b1", Region: "ord", Address: "10.0.1.1"},
			{ID: "000000000000c1", Region: "lhr", Address: "10.0.2.1"},
		},
	}}}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	s := &FlyL4Selection{app: a}
	go func() {
		if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			defer c.Close()
			c.Read(make([]byte, 1))
		}
	}()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	cx := layer4.WrapConnection(sc, nil, zap.NewNop())
	pool := l4proxy.UpstreamPool{
		{Dial: []string{"192.0.2.1:5432"}},    // no machine of the app
		{Dial: []string{"tcp/10.0.2.1:5432"}}, // lhr
		{Dial: []string{"10.0.1.1:5432"}},     // ord, nearer
	}
	if up := s.Select(pool, cx); up != pool[2] {
		t.Fatalf("chose %v, want the ord machine", up)
	}
	rt, _ := a.RouteForConn(cx)
	rt.machines[rt.MachineIndex("000000000000b1")].health.failedUntil.Store(1 << 62) // ord refused
	if up := s.Select(pool, cx); up != pool[1] {
		t.Errorf("with ord down chose %v, want lhr", up)
	}
}

// TestFlyTransportFailover: a machine that refuses the connection is left
// out and the request goes to the next one; a forced machine has no next.
func TestFlyTransportFailover(t *testing.T) {
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("live " + r.Header.Get(HeaderPreferredUnavailable)))
	}))
	defer live.Close()
	ap := netip.MustParseAddrPort(live.Listener.Addr().String())
	dead, err := net.Listen("tcp", "127.0.63.1:"+strconv.Itoa(int(ap.Port())))
	if err != nil {
		t.Fatal(err)
	}
	dead.Close() // nothing listens there now: connections are refused
	a := &App{Region: "iad", BaseDomain: "edge.test", Apps: map[string]*Application{"web": {
		Services: []*Service{{InternalPort: int(ap.Port()), Ports: []*Port{{Port: 80, Handlers: []string{"http"}}}}},
		Machines: []*Machine{
			{ID: "0000000000de01", Region: "iad", Address: "127.0.63.1"}, // nearest, dead
			{ID: "0000000000a701", Region: "lhr", Address: ap.Addr().String()},
		},
	}}}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	tr := newFlyTransport(t)
	send := func(hdr map[string]string) (*http.Request, string, error) {
		r := request("web.edge.test", "127.0.0.1:80", hdr)
		rt, err := a.RouteForRequest(r)
		if err != nil {
			t.Fatal(err)
		}
		i, _ := Select(rt, &tries{tried: make([]bool, rt.NumMachines())}, preferenceOf(r))
		dial := rt.machines[i].dial
		host, port, _ := net.SplitHostPort(dial)
		r = r.WithContext(context.WithValue(r.Context(), dialInfoCtxKey, reverseproxy.DialInfo{Network: "tcp", Address: dial, Host: host, Port: port}))
		// the key is Caddy's own: its reverse proxy and transport read it
		if di, ok := reverseproxy.GetDialInfo(r.Context()); !ok || di.Address != dial {
			t.Fatalf("Caddy does not read the dial info under %q: the transport's failover would dial nowhere", dialInfoCtxKey)
		}
		r.URL.Scheme, r.URL.Host, r.RequestURI = "http", dial, ""
		resp, err := tr.RoundTrip(r)
		if err != nil {
			return r, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return r, string(b), nil
	}
	r, _, err := send(map[string]string{"Fly-Force-Instance-Id": "0000000000de01"})
	if o, ok := Unroutable(r); err == nil || !ok || o != ForcedUnavailable {
		t.Errorf("forced to the dead machine: %v, outcome %v %t; want ForcedUnavailable", err, o, ok)
	}
	rt, _ := a.RouteForRequest(request("web.edge.test", "127.0.0.1:80", nil))
	refused := rt.machines[rt.MachineIndex("0000000000de01")]
	if refused.available() {
		t.Error("the machine that refused is still available for selection")
	}
	refused.health.failedUntil.Store(0) // as if its fail duration passed
	if _, body, err := send(map[string]string{"Fly-Prefer-Instance-Id": "0000000000de01"}); err != nil || body != "live 0000000000de01" {
		t.Fatalf("the dead machine preferred: %q, %v; want the live one, told", body, err)
	}
}

// newFlyTransport provisions a fly transport with its defaults.
func newFlyTransport(t *testing.T) *FlyTransport {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	tr := new(FlyTransport)
	if err := tr.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Cleanup() })
	return tr
}
