package routing

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

// resolverApps are three apps on one edge: web and api share 443, other
// shares 80 with web, tcp alone serves 9000 and api alone 5432.
func resolverApps() map[string]*Application {
	m := []*Machine{{ID: "000000000000a1", Region: "iad", Address: "10.9.0.1"}}
	port := func(n int, handlers ...string) *Port { return &Port{Port: n, Handlers: handlers} }
	return map[string]*Application{
		"web": {
			Hostnames: []string{"www.example.com", "*.wild.example.com"},
			Services:  []*Service{{InternalPort: 8080, Ports: []*Port{port(80, "http"), port(443, "tls", "http")}}},
			Machines:  m,
		},
		"api": {Services: []*Service{
			{InternalPort: 8080, Ports: []*Port{port(443, "tls", "http")}},
			{InternalPort: 5432, Ports: []*Port{port(5432, "pg_tls")}},
		}},
		"other": {Services: []*Service{{InternalPort: 8080, Ports: []*Port{port(80, "http")}}}},
		"tcp":   {Services: []*Service{{InternalPort: 7, Ports: []*Port{port(9000)}}}},
	}
}

// resolverLive pushes what a store would hold: addresses, and host names
// added through the certs API, for three apps and one that the config
// does not have.
func resolverLive(a *App, byAddress bool) {
	if byAddress {
		a.RouteByAddress([]netip.Addr{netip.MustParseAddr("10.0.0.1")})
	}
	addrs := func(s ...string) (out []netip.Addr) {
		for _, x := range s {
			out = append(out, netip.MustParseAddr(x))
		}
		return out
	}
	for app, l := range map[string]*LiveApp{
		"web":   {Dedicated: addrs("fd00::1", "192.0.2.10"), Shared: addrs("10.0.0.1"), Hostnames: []string{"custom.example.net", "*.cw.example.net"}},
		"api":   {Dedicated: addrs("fd00::2"), Shared: addrs("10.0.0.1")},
		"tcp":   {Dedicated: addrs("192.0.2.20")},
		"ghost": {Dedicated: addrs("192.0.2.99"), Hostnames: []string{"ghost.example.net"}},
	} {
		if err := a.SetLive(app, l); err != nil {
			panic(err)
		}
	}
}

// resolverEdges are two edges with resolverApps and resolverLive: one
// routing by address, one without IP pools.
func resolverEdges(t *testing.T) (withPools, noPools *App) {
	t.Helper()
	withPools = &App{Region: "iad", BaseDomain: "edge.test", Apps: resolverApps()}
	noPools = &App{Region: "iad", BaseDomain: "edge.test", Apps: resolverApps()}
	for _, a := range []*App{withPools, noPools} {
		if err := provision(t, a); err != nil {
			t.Fatal(err)
		}
	}
	resolverLive(withPools, true)
	resolverLive(noPools, false)
	return withPools, noPools
}

func tcpAddr(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }

// TestResolve is every class of Resolve's answer, with address routing
// (dedicated v4 and v6, the shared v4 address) and without (by port,
// then by name).
func TestResolve(t *testing.T) {
	withPools, noPools := resolverEdges(t)

	for _, tc := range []struct {
		name  string
		app   *App
		local string
		sni   string
		want  string // app, or "" for an error
		err   error
	}{
		{"dedicated v6, no name", withPools, "[fd00::1]:443", "", "web", nil},
		{"dedicated v6, another app's name", withPools, "[fd00::1]:443", "api.edge.test", "web", nil},
		{"dedicated v6, unknown name", withPools, "[fd00::2]:443", "nobody.example", "api", nil},
		{"dedicated v4", withPools, "192.0.2.10:80", "", "web", nil},
		{"dedicated v4 mapped in v6", withPools, "[::ffff:192.0.2.20]:9000", "", "tcp", nil},
		{"dedicated, port the app has no service on", withPools, "[fd00::2]:80", "", "", ErrNoService},
		{"dedicated address of an app not configured", withPools, "192.0.2.99:443", "", "", ErrDenied},
		{"shared, known name", withPools, "10.0.0.1:443", "api.edge.test", "api", nil},
		{"shared, name in any case with a final dot", withPools, "10.0.0.1:443", "API.Edge.Test.", "api", nil},
		{"shared, config host name", withPools, "10.0.0.1:443", "www.example.com", "web", nil},
		{"shared, certs API host name", withPools, "10.0.0.1:443", "custom.example.net", "web", nil},
		{"shared, config wildcard", withPools, "10.0.0.1:443", "x.wild.example.com", "web", nil},
		{"shared, certs API wildcard", withPools, "10.0.0.1:80", "a.cw.example.net", "web", nil},
		{"shared, wildcard does not cover its base", withPools, "10.0.0.1:443", "wild.example.com", "", ErrDenied},
		{"shared, unknown name", withPools, "10.0.0.1:443", "nobody.example", "", ErrDenied},
		{"shared, missing name", withPools, "10.0.0.1:443", "", "", ErrDenied},
		{"shared, app that does not hold the address", withPools, "10.0.0.1:9000", "tcp.edge.test", "", ErrDenied},
		{"shared, port the app has no service on", withPools, "10.0.0.1:80", "api.edge.test", "", ErrNoService},
		{"address no app holds", withPools, "192.0.2.50:443", "web.edge.test", "", ErrDenied},

		{"no pools, shared port, known name", noPools, "127.0.0.1:443", "api.edge.test", "api", nil},
		{"no pools, shared port, config host name", noPools, "127.0.0.1:443", "www.example.com", "web", nil},
		{"no pools, shared port, certs API host name", noPools, "127.0.0.1:443", "custom.example.net", "web", nil},
		{"no pools, shared port, wildcard", noPools, "127.0.0.1:443", "x.wild.example.com", "web", nil},
		{"no pools, shared port, unknown name", noPools, "127.0.0.1:443", "nobody.example", "", ErrNoApp},
		{"no pools, shared port, missing name", noPools, "127.0.0.1:443", "", "", ErrNoApp},
		{"no pools, shared port, app without a service on it", noPools, "127.0.0.1:80", "api.edge.test", "", ErrNoService},
		{"no pools, name of an app not configured", noPools, "127.0.0.1:443", "ghost.example.net", "", ErrNoApp},
		{"no pools, one app's port, no name", noPools, "127.0.0.1:5432", "", "api", nil},
		{"no pools, one app's port, unknown name", noPools, "127.0.0.1:5432", "nobody.example", "api", nil},
		{"no pools, one app's port, another app's name", noPools, "[::1]:9000", "web.edge.test", "tcp", nil},
		{"no pools, port no app serves, unknown name", noPools, "127.0.0.1:7777", "nobody.example", "", ErrDenied},
		{"no pools, port no app serves, known name", noPools, "127.0.0.1:7777", "web.edge.test", "", ErrNoService},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt, err := tc.app.Resolve(tcpAddr(tc.local), tc.sni)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("Resolve(%s, %q) = %v, %v; want error %v", tc.local, tc.sni, rt, err, tc.err)
				}
				return
			}
			if err != nil || rt.App != tc.want || rt.PortString != portString(tc.local) {
				t.Fatalf("Resolve(%s, %q) = %v, %v; want app %s", tc.local, tc.sni, rt, err, tc.want)
			}
		})
	}
}

func portString(addrPort string) string {
	_, p, _ := net.SplitHostPort(addrPort)
	return p
}

// TestNameDecides: a layer 4 matcher reads the ClientHello only where
// the name decides.
func TestNameDecides(t *testing.T) {
	withPools, noPools := resolverEdges(t)
	for _, tc := range []struct {
		app   *App
		local string
		want  bool
	}{
		{withPools, "10.0.0.1:443", true},
		{withPools, "[fd00::1]:443", false},
		{withPools, "192.0.2.50:443", false},
		{noPools, "127.0.0.1:443", true},
		{noPools, "127.0.0.1:5432", false},
		{noPools, "127.0.0.1:7777", false},
	} {
		if got := tc.app.NameDecides(tcpAddr(tc.local)); got != tc.want {
			t.Errorf("NameDecides(%s), pools %t = %t", tc.local, tc.app == withPools, got)
		}
	}
}

// TestSetLive: a host name or address that moves to another app, or is
// released, routes as the latest push says.
func TestSetLive(t *testing.T) {
	a := &App{Region: "iad", BaseDomain: "edge.test", Apps: resolverApps()}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	resolverLive(a, true)
	shared := tcpAddr("10.0.0.1:443")
	if rt, err := a.Resolve(shared, "custom.example.net"); err != nil || rt.App != "web" {
		t.Fatalf("before: %v, %v", rt, err)
	}
	// the name moves to api: api's push comes first, web's after
	if err := a.SetLive("api", &LiveApp{Shared: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, Hostnames: []string{"custom.example.net"}}); err != nil {
		t.Fatal(err)
	}
	if err := a.SetLive("web", &LiveApp{Shared: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}); err != nil {
		t.Fatal(err)
	}
	if rt, err := a.Resolve(shared, "custom.example.net"); err != nil || rt.App != "api" {
		t.Errorf("after the move: %v, %v; want api", rt, err)
	}
	if _, err := a.Resolve(tcpAddr("[fd00::1]:443"), ""); !errors.Is(err, ErrDenied) {
		t.Errorf("web's released v6: %v, want denied", err)
	}
	if got := a.HostApp("a.cw.example.net"); got != "" {
		t.Errorf("released wildcard still answers for %s", got)
	}
	if err := a.SetLive("web", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Resolve(shared, "web.edge.test"); !errors.Is(err, ErrDenied) {
		t.Errorf("web left the shared address but is still reached: %v", err)
	}
	// machines arrive with the push
	m := &Machine{ID: "000000000000b7", Region: "lhr", Address: "10.9.0.7"}
	if err := a.SetLive("web", &LiveApp{Shared: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, Machines: []*Machine{m}}); err != nil {
		t.Fatal(err)
	}
	rt, err := a.Resolve(shared, "web.edge.test")
	if err != nil || rt.MachineIndex(m.ID) < 0 {
		t.Errorf("pushed machine not routable: %v", err)
	}
}

// TestSetLiveLeavesOutBadMachines: one machine that cannot be taken does
// not keep the app's others from being registered or removed.
func TestSetLiveLeavesOutBadMachines(t *testing.T) {
	a := &App{Region: "iad", BaseDomain: "edge.test", Apps: resolverApps()}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	good := &Machine{ID: "0000000000dd01", Region: "lhr", Address: "10.9.0.5"}
	taken := &Machine{ID: "000000000000a1", Region: "iad", Address: "10.9.0.6"} // web's config machine
	mars := &Machine{ID: "0000000000dd02", Region: "mars", Address: "10.9.0.7"}
	err := a.SetLive("api", &LiveApp{Machines: []*Machine{good, taken, mars}})
	if err == nil || !strings.Contains(err.Error(), "000000000000a1") || !strings.Contains(err.Error(), "0000000000dd02") {
		t.Errorf("error %v, want both bad machines named", err)
	}
	if live := a.LiveMachines("api"); len(live) != 1 || live[0].ID != good.ID {
		t.Errorf("live machines %v, want the good one", live)
	}
	if err := a.SetLive("api", &LiveApp{Machines: []*Machine{taken}}); err == nil || len(a.LiveMachines("api")) != 0 {
		t.Errorf("removing the good one beside a bad one: %v, live %v", err, a.LiveMachines("api"))
	}
}

// TestHostIndex: the one rule of the host index (hostApp), as HostApp,
// HostOwner and CheckApp read it. web's config has www.example.com and
// *.wild.example.com; the certs API added custom.example.net and
// *.cw.example.net for web, ghost.example.net for ghost.
func TestHostIndex(t *testing.T) {
	withPools, _ := resolverEdges(t)
	for _, tc := range []struct {
		name     string
		hostApp  string // HostApp: exact, then the wildcard one label up
		hostOwnr string // HostOwner: the config's exact names only
	}{
		{"web.edge.test", "web", "web"},
		{"WWW.Example.COM.", "web", ""}, // HostOwner takes names as they are
		{"www.example.com", "web", "web"},
		{"*.wild.example.com", "web", "web"},
		{"a.wild.example.com", "web", ""},
		{"a.b.wild.example.com", "", ""},
		{"custom.example.net", "web", ""},
		{"a.cw.example.net", "web", ""},
		{"ghost.example.net", "ghost", ""},
		{"nobody.example.org", "", ""},
		{"", "", ""},
	} {
		if got := withPools.HostApp(tc.name); got != tc.hostApp {
			t.Errorf("HostApp(%q) = %q, want %q", tc.name, got, tc.hostApp)
		}
		if got := withPools.HostOwner(tc.name); got != tc.hostOwnr {
			t.Errorf("HostOwner(%q) = %q, want %q", tc.name, got, tc.hostOwnr)
		}
	}
	cfg, err := ParseApp("fresh", []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := withPools.CheckApp("fresh", cfg); err != nil {
		t.Errorf("a new app whose name nobody answers to: %v", err)
	}
	if err := withPools.CheckApp("web", cfg); !errors.Is(err, ErrAppDefined) {
		t.Errorf("the config's app: %v, want ErrAppDefined", err)
	}
	if err := withPools.SetLive("squatter", &LiveApp{Hostnames: []string{"taken.edge.test"}}); err != nil {
		t.Fatal(err)
	}
	if err := withPools.CheckApp("taken", cfg); !errors.Is(err, ErrHostTaken) || !strings.Contains(err.Error(), "squatter added taken.edge.test through the certs API") {
		t.Errorf("a name another app added: %v, want ErrHostTaken naming squatter", err)
	}
}
