package routing

import (
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// TestHealthSeveralChecks: a machine that passes its service's tcp check
// but fails its http check stays out of selection, check after check.
func TestHealthSeveralChecks(t *testing.T) {
	serve := func(addr string, status int) string {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(status) })}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		return port
	}
	port := serve("127.0.58.1:0", http.StatusInternalServerError)
	if serve("127.0.58.2:"+port, http.StatusOK) != port {
		t.Fatal("second machine on another port")
	}
	fast := caddy.Duration(20 * time.Millisecond)
	a := &App{
		Region: "iad",
		Apps: map[string]*Application{"web": {
			Services: []*Service{{
				InternalPort: atoi(t, port),
				Ports:        []*Port{{Port: 443, Handlers: []string{"tls", "http"}}},
				Checks: []*Check{
					{Type: "tcp", Interval: fast, Timeout: fast * 5, GracePeriod: 1},
					{Type: "http", Path: "/", Interval: fast, Timeout: fast * 5, GracePeriod: 1},
				},
			}},
			Machines: []*Machine{
				{ID: "000000000000a1", Region: "iad", Address: "127.0.58.1"}, // nearest by ID order, fails http
				{ID: "000000000000a2", Region: "iad", Address: "127.0.58.2"},
			},
		}},
	}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	rt, _ := routeFor(a, "web.localhost", 443)
	bad := rt.MachineIndex("000000000000a1")
	deadline := time.Now().Add(5 * time.Second)
	for rt.machines[bad].available() {
		if time.Now().After(deadline) {
			t.Fatal("the machine failing its http check is still available after 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for range 60 { // 300 ms: about 15 rounds of both checks
		if rt.machines[bad].available() {
			t.Fatal("the machine failing its http check came back because its tcp check passed")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := net.LookupPort("tcp", s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
