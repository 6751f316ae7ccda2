package routing

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
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
	interval := caddy.Duration(MinCheckInterval)
	a := &App{
		Region: "iad",
		Apps: map[string]*Application{"web": {
			Services: []*Service{{
				InternalPort: atoi(t, port),
				Ports:        []*Port{{Port: 443, Handlers: []string{"tls", "http"}}},
				Checks: []*Check{
					{Type: "tcp", Interval: interval, Timeout: fast * 5, GracePeriod: 1},
					{Type: "http", Path: "/", Interval: interval, Timeout: fast * 5, GracePeriod: 1},
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
	for range 440 { // 2.2 s: two more rounds of both checks
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

// TestCheckBounds: a check below the floors, or an app with more checks
// than the cap, is a config error naming the field and the limit; so is
// it through the admin API (ParseApp). At the floors, it loads.
func TestCheckBounds(t *testing.T) {
	svc := func(checks ...*Check) *Service {
		return &Service{InternalPort: 8080, Ports: []*Port{{Port: 443, Handlers: []string{"tls", "http"}}}, Checks: checks}
	}
	many := func(n int) []*Check {
		out := make([]*Check, n)
		for i := range out {
			out[i] = &Check{Type: "http", Path: fmt.Sprintf("/c%d", i)}
		}
		return out
	}
	ms := caddy.Duration(time.Millisecond)
	for _, tc := range []struct {
		name     string
		services []*Service
		want     string // "" when it loads
		json     string // the same app through the admin API
	}{
		{"interval 1ns", []*Service{svc(&Check{Type: "tcp", Interval: 1})},
			"apps.web.services[0].checks[0].interval: 1ns is below the minimum of 1s",
			`{"services":[{"internal_port":8080,"ports":[{"port":443,"handlers":["tls","http"]}],"checks":[{"type":"tcp","interval":"1ns"}]}]}`},
		{"interval 1ms (fly.toml's interval = 1)", []*Service{svc(&Check{Type: "tcp", Interval: ms})},
			"apps.web.services[0].checks[0].interval: 1ms is below the minimum of 1s", ""},
		{"timeout 1ms", []*Service{svc(), svc(&Check{Type: "http", Interval: 10000 * ms, Timeout: ms})},
			"apps.web.services[1].checks[0].timeout: 1ms is below the minimum of 100ms", ""},
		{"21 checks", []*Service{svc(many(15)...), svc(many(6)...)},
			"apps.web.services[1].checks: 21 checks in the app; at most 20 per app",
			`{"services":[{"internal_port":8080,"ports":[{"port":443,"handlers":["tls","http"]}],"checks":[` +
				strings.Repeat(`{"type":"tcp"},`, 20) + `{"type":"tcp"}]}]}`},
		{"at the floors and the cap", []*Service{svc(append(many(19), &Check{Type: "tcp", Interval: 1000 * ms, Timeout: 100 * ms})...)}, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i, s := range tc.services {
				if i > 0 {
					s.Ports[0].Port = 8443 + i
				}
			}
			a := &App{Region: "iad", Apps: map[string]*Application{"web": {Services: tc.services}}}
			err := provision(t, a)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("config: got %v, want %q", err, tc.want)
			}
			if tc.json != "" {
				_, err := ParseApp("web", []byte(tc.json))
				want := tc.want
				if strings.HasPrefix(want, "apps.web.services[1]") {
					want = "checks: 21 checks in the app; at most 20 per app"
				}
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("admin API: got %v, want %q", err, want)
				}
			}
		})
	}
}

// TestHealthProbeRate: the probes of an app's checks, and of all the
// apps' checks together, run no faster than their budget however many
// machines ask for them: 60 machines checked every second against one
// listener reach it about 120 times in 2 s unbounded.
func TestHealthProbeRate(t *testing.T) {
	for _, tc := range []struct {
		name         string
		perApp, edge int
		apps         int
	}{
		{"per app", 10, 1000, 1},
		{"per edge", 1000, 10, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			oldApp, oldEdge := probesPerApp, probesPerEdge
			probesPerApp, probesPerEdge = tc.perApp, newPacer(tc.edge)
			t.Cleanup(func() { probesPerApp, probesPerEdge = oldApp, oldEdge })

			ln, err := net.Listen("tcp", "127.0.59.1:0")
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
					c.Close()
				}
			}()
			_, port, _ := net.SplitHostPort(ln.Addr().String())
			apps := map[string]*Application{}
			for ai := range tc.apps {
				app := &Application{Services: []*Service{{
					InternalPort: atoi(t, port),
					Ports:        []*Port{{Port: 443, Handlers: []string{"tls", "http"}}},
					Checks:       []*Check{{Type: "tcp", Interval: caddy.Duration(time.Second), GracePeriod: 1}},
				}}}
				for mi := range 60 / tc.apps {
					app.Machines = append(app.Machines, &Machine{ID: fmt.Sprintf("%012x%02x", ai, mi), Region: "iad", Address: "127.0.59.1"})
				}
				apps[fmt.Sprintf("app%d", ai)] = app
			}
			a := &App{Region: "iad", Apps: apps}
			if err := provision(t, a); err != nil {
				t.Fatal(err)
			}
			if err := a.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Second)
			a.Stop()
			n := accepted.Load()
			// a burst of one second's budget, then two seconds of it
			budget := int64(3 * min(tc.perApp*tc.apps, tc.edge))
			if n == 0 || n > budget+2 {
				t.Fatalf("%d probes in 2 s; want 1 to %d", n, budget)
			}
		})
	}
}
