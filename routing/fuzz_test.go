package routing

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzSelect feeds arbitrary Fly-* header values (client bytes) to
// selection: it must never panic, and must only return a machine of the
// route or -1 with a reason.
func FuzzSelect(f *testing.F) {
	for _, s := range []string{"", "iad", "iad,ord,us,na", " lhr , EU ,", ",,,", "\x00\xff", "000000000000a1", strings.Repeat("a,", 500)} {
		f.Add(s, s, s)
	}
	a := &App{Region: "iad", BaseDomain: "edge.test", Apps: map[string]*Application{"web": {
		Services: []*Service{{InternalPort: 8080, Ports: []*Port{{Port: 443, Handlers: []string{"tls", "http"}}}}},
		Machines: []*Machine{
			{ID: "000000000000a1", Region: "iad", Address: "10.0.0.1"},
			{ID: "000000000000c1", Region: "lhr", Address: "10.0.2.1"},
		},
	}}}
	if err := provision(f, a); err != nil {
		f.Fatal(err)
	}
	rt, err := routeFor(a, "web.edge.test", 443)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, force, prefer, regions string) {
		i, outcome := Select(rt, pool{}, Preference{ForceInstance: force, PreferInstance: prefer, PreferRegions: regions})
		if i >= rt.NumMachines() || (i < 0) != (outcome >= ForcedUnknown) {
			t.Fatalf("Select = %d, %d", i, outcome)
		}
		if force == "" && i < 0 {
			t.Fatal("without a forced instance a healthy route must always yield a machine")
		}
	})
}

// FuzzRequestHost feeds arbitrary Host values to the app lookup.
func FuzzRequestHost(f *testing.F) {
	for _, s := range []string{"web.edge.test", "WEB.Edge.Test:443", "[::1]:80", "[::1]", "web.edge.test.", ":", "]", "[", "a:b:c"} {
		f.Add(s)
	}
	a := &App{Region: "iad", BaseDomain: "edge.test", Apps: map[string]*Application{"web": {}}}
	if err := provision(f, a); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, host string) {
		h := requestHost(&http.Request{Host: host})
		if strings.ContainsAny(h, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") {
			t.Fatalf("requestHost(%q) = %q is not lower case", host, h)
		}
		_, _ = routeFor(a, h, 443)
	})
}
