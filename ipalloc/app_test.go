package ipalloc

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/routing"
)

var testPools = Pools{
	V6:       []string{"fd00:fe::/64"},
	SharedV4: []string{"127.20.0.1"},
	V4:       []string{"127.30.0.0/29"}, // 6 addresses
	EgressV4: []string{"127.40.0.0/24"},
	EgressV6: []string{"fd00:e9::/64"},
}

// newFly provisions a fly app with n apps named app0, app1, ..., each
// serving tls+http on 443.
func newFly(t testing.TB, n int) *routing.App {
	t.Helper()
	fly := &routing.App{BaseDomain: "edge.test", Apps: map[string]*routing.Application{}}
	for i := range n {
		fly.Apps[fmt.Sprintf("app%d", i)] = &routing.Application{
			Services: []*routing.Service{{InternalPort: 8080, Ports: []*routing.Port{{Port: 443, Handlers: []string{"tls", "http"}}}}},
			Machines: []*routing.Machine{{ID: fmt.Sprintf("%014x", i), Region: "iad", Address: "127.0.0.1"}},
		}
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := fly.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fly.Cleanup() })
	return fly
}

// newNode sets up a fly_ips app on the file storage at dir with a store
// of its own (as a separate Caddy process would have).
func newNode(t testing.TB, fly *routing.App, dir string, pools Pools) *App {
	t.Helper()
	return nodeOn(t, fly, &certmagic.FileStorage{Path: dir}, pools)
}

// appAt returns the app the fly app routes a connection to addr, port
// 443, naming name to, or "".
func appAt(a *App, addr netip.Addr, name string) string {
	rt, err := a.fly.Resolve(net.TCPAddrFromAddrPort(netip.AddrPortFrom(addr, 443)), name)
	if err != nil {
		return ""
	}
	return rt.App
}

func TestAllocation(t *testing.T) {
	ctx := context.Background()
	a := newNode(t, newFly(t, 3), t.TempDir(), testPools)

	v6, created, err := a.Allocate(ctx, "app0", TypeV6)
	if err != nil || !created || v6.Address != "fd00:fe::1" || v6.Region != "global" {
		t.Fatalf("allocate-v6: %+v %v %v", v6, created, err)
	}
	s1, created, err := a.Allocate(ctx, "app0", TypeSharedV4)
	if err != nil || !created || s1.Address != "127.20.0.1" {
		t.Fatalf("allocate-v4 --shared: %+v %v %v", s1, created, err)
	}
	s2, created, err := a.Allocate(ctx, "app0", TypeSharedV4)
	if err != nil || created || s2 != s1 {
		t.Fatalf("asking twice for a shared address: %+v %v %v, want the first one again", s2, created, err)
	}
	if _, _, err := a.Allocate(ctx, "app1", TypeSharedV4); err != nil {
		t.Fatal(err)
	}
	var got []string
	for range 6 {
		v4, _, err := a.Allocate(ctx, "app2", TypeV4)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, v4.Address)
	}
	if _, _, err := a.Allocate(ctx, "app1", TypeV4); statusOf(err) != 409 {
		t.Fatalf("allocating from an exhausted pool: %v (status %d), want 409", err, statusOf(err))
	}
	if _, _, err := a.Allocate(ctx, "nope", TypeV4); statusOf(err) != 404 {
		t.Fatalf("unknown app: %v, want 404", err)
	}
	if _, _, err := a.Allocate(ctx, "app1", "v5"); statusOf(err) != 400 {
		t.Fatalf("bad type: %v, want 400", err)
	}

	// routing by address
	for _, tc := range []struct {
		addr, name, want string
	}{
		{"fd00:fe::1", "", "app0"},
		{"fd00:fe::1", "anything.example", "app0"},
		{got[0], "", "app2"},
		{"127.20.0.1", "app0.edge.test", "app0"},
		{"127.20.0.1", "app1.edge.test", "app1"},
		{"127.20.0.1", "app2.edge.test", ""}, // app2 holds no shared address
		{"127.20.0.1", "", ""},
		{"127.20.0.1", "nobody.edge.test", ""},
		{"127.0.0.1", "app0.edge.test", ""}, // not an edge address
	} {
		app := appAt(a, netip.MustParseAddr(tc.addr), tc.name)
		if app != tc.want {
			t.Errorf("app at %s for %q = %q; want %q", tc.addr, tc.name, app, tc.want)
		}
	}

	// release: only the holder, and a shared address only for that app
	if err := a.Release(ctx, "app1", got[0]); statusOf(err) != 404 {
		t.Errorf("releasing another app's address: %v, want 404", err)
	}
	if err := a.Release(ctx, "app0", "127.20.0.1"); err != nil {
		t.Fatal(err)
	}
	if app := appAt(a, netip.MustParseAddr("127.20.0.1"), "app0.edge.test"); app != "" {
		t.Errorf("app0 released the shared address but still gets its connections")
	}
	if app := appAt(a, netip.MustParseAddr("127.20.0.1"), "app1.edge.test"); app != "app1" {
		t.Errorf("app1 lost the shared address when app0 released it")
	}
	if err := a.Release(ctx, "app2", got[3]); err != nil {
		t.Fatal(err)
	}
	if v4, _, err := a.Allocate(ctx, "app1", TypeV4); err != nil || v4.Address != got[3] {
		t.Errorf("after a release the pool hands out %+v, %v; want %s", v4, err, got[3])
	}
}

func TestCerts(t *testing.T) {
	ctx := context.Background()
	a := newNode(t, newFly(t, 2), t.TempDir(), testPools)
	if _, _, err := a.Allocate(ctx, "app0", TypeSharedV4); err != nil {
		t.Fatal(err)
	}
	shared := netip.MustParseAddr("127.20.0.1")
	if app := appAt(a, shared, "www.example.com"); app != "" {
		t.Fatal("an unregistered host name got a route")
	}
	if a.fly.HostApp("www.example.com") != "" {
		t.Fatal("an unregistered host name is allowed a certificate")
	}
	c, created, err := a.AddCert(ctx, "app0", "WWW.Example.com.")
	if err != nil || !created || c.Hostname != "www.example.com" {
		t.Fatalf("certs add: %+v %v %v", c, created, err)
	}
	if app := appAt(a, shared, "www.example.com"); app != "app0" {
		t.Errorf("registered host name routes to %q", app)
	}
	if _, created, err := a.AddCert(ctx, "app0", "www.example.com"); err != nil || created {
		t.Errorf("adding the same name twice: %v %v", created, err)
	}
	if _, _, err := a.AddCert(ctx, "app1", "www.example.com"); statusOf(err) != 409 {
		t.Errorf("another app's host name: %v, want 409", err)
	}
	if _, _, err := a.AddCert(ctx, "app1", "app0.edge.test"); statusOf(err) != 409 {
		t.Errorf("another app's own name: %v, want 409", err)
	}
	if _, _, err := a.AddCert(ctx, "app1", "not a name"); statusOf(err) != 400 {
		t.Errorf("bad host name: %v, want 400", err)
	}
	if _, _, err := a.AddCert(ctx, "app0", "*.apps.example.com"); err != nil {
		t.Fatal(err)
	}
	if app := appAt(a, shared, "x.apps.example.com"); app != "app0" {
		t.Errorf("wildcard host name routes to %q", app)
	}
	if err := a.RemoveCert(ctx, "app1", "www.example.com"); statusOf(err) != 404 {
		t.Errorf("removing another app's name: %v, want 404", err)
	}
	if err := a.RemoveCert(ctx, "app0", "www.example.com"); err != nil {
		t.Fatal(err)
	}
	if a.fly.HostApp("www.example.com") != "" {
		t.Error("a removed host name is still allowed a certificate")
	}
}

func TestEgress(t *testing.T) {
	ctx := context.Background()
	a := newNode(t, newFly(t, 2), t.TempDir(), testPools)
	m := fmt.Sprintf("%014x", 0) // app0's machine
	e, err := a.AllocateEgress(ctx, "app0", m)
	if err != nil || e.V4 != "127.40.0.1" || e.V6 != "fd00:e9::1" || e.Machine != m {
		t.Fatalf("egress-ip allocate: %+v %v", e, err)
	}
	if _, err := a.AllocateEgress(ctx, "app0", m); statusOf(err) != 409 {
		t.Errorf("second pair for one machine: %v, want 409", err)
	}
	if _, err := a.AllocateEgress(ctx, "app0", fmt.Sprintf("%014x", 1)); statusOf(err) != 404 {
		t.Errorf("another app's machine: %v, want 404", err)
	}
	list, err := a.EgressIPs("app0", "")
	if err != nil || len(list) != 1 || list[0] != e {
		t.Fatalf("egress-ip list: %+v %v", list, err)
	}
	if err := a.ReleaseEgress(ctx, "app0", m, "127.40.0.9"); statusOf(err) != 404 {
		t.Errorf("releasing an address the machine does not have: %v, want 404", err)
	}
	if err := a.ReleaseEgress(ctx, "app0", m, e.V6); err != nil {
		t.Fatal(err)
	}
	if list, _ := a.EgressIPs("app0", ""); len(list) != 0 {
		t.Errorf("pair still listed after release: %+v", list)
	}
}

// TestTwoNodes: two edges sharing one storage folder, 50 concurrent
// allocations each, never hand out an address twice, and each sees the
// other's assignments.
func TestTwoNodes(t *testing.T) {
	dir := t.TempDir()
	fly := newFly(t, 100)
	pools := Pools{V4: []string{"127.30.0.0/16"}, V6: []string{"fd00:fe::/64"}}
	nodes := []*App{newNode(t, fly, dir, pools), newNode(t, fly, dir, pools)}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for n, node := range nodes {
		for i := range 50 {
			wg.Go(func() {
				typ := TypeV4
				if i%2 == 1 {
					typ = TypeV6
				}
				if _, _, err := node.Allocate(context.Background(), fmt.Sprintf("app%d", n*50+i), typ); err != nil {
					errs <- err
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		a, errA := nodes[0].IPs("")
		b, errB := nodes[1].IPs("")
		if errA != nil || errB != nil {
			t.Fatal(errA, errB)
		}
		if len(a) == 100 && len(b) == 100 {
			for _, list := range [][]Assignment{a, b} {
				seen := map[string]string{}
				for _, asg := range list {
					if other, dup := seen[asg.Address]; dup {
						t.Fatalf("%s handed out twice: %s and %s", asg.Address, other, asg.App)
					}
					seen[asg.Address] = asg.App
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 2 s the nodes see %d and %d of 100 assignments", len(a), len(b))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReopen: a store opened again (a restarted Caddy) has every change,
// across compactions.
func TestReopen(t *testing.T) {
	old := compactEvery
	compactEvery = 8
	t.Cleanup(func() { compactEvery = old })
	dir := t.TempDir()
	fly := newFly(t, 40)
	a := newNode(t, fly, dir, testPools)
	ctx := context.Background()
	for i := range 40 {
		if _, _, err := a.Allocate(ctx, fmt.Sprintf("app%d", i), TypeV6); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			if err := a.Release(ctx, fmt.Sprintf("app%d", i), fmt.Sprintf("fd00:fe::%x", i+1)); err != nil {
				t.Fatal(err)
			}
		}
	}
	want, _ := a.IPs("")
	b := newNode(t, fly, dir, testPools)
	got, _ := b.IPs("")
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("reopened state differs:\n got %v\nwant %v", got, want)
	}
	if len(want) != 26 {
		t.Fatalf("%d assignments, want 26", len(want))
	}
}

// TestCertRules: the certs API refuses names no tenant may claim, and
// says why.
func TestCertRules(t *testing.T) {
	ctx := context.Background()
	a := newNode(t, newFly(t, 2), t.TempDir(), testPools)
	for _, tc := range []struct {
		host   string
		status int
		why    string
	}{
		{"*.com", 400, "covers the public suffix com"},
		{"*.co.uk", 400, "covers the public suffix co.uk"},
		{"*.github.io", 400, "covers the public suffix github.io"},
		{"co.uk", 400, "is a public suffix"},
		{"127.0.0.1", 400, "is an IP address"},
		{"[::1]", 400, "is an IP address"},
		{"*.edge.test", 400, "under the edge's base domain edge.test"},
		{"newapp.edge.test", 400, "under the edge's base domain"},
		{"edge.test", 400, "under the edge's base domain"},
		{"app1.edge.test", 409, "taken by app app1"},
		{"app0.edge.test", 409, "already a host name of app app0"},
		{"shop.example.com", 201, ""},
		{"*.shop.example.com", 201, ""},
	} {
		t.Run(tc.host, func(t *testing.T) {
			_, created, err := a.AddCert(ctx, "app0", tc.host)
			if tc.status == 201 {
				if err != nil || !created {
					t.Fatalf("AddCert(%s): %v, created %t", tc.host, err, created)
				}
				return
			}
			if statusOf(err) != tc.status || !strings.Contains(err.Error(), tc.why) {
				t.Fatalf("AddCert(%s): %v (status %d), want %d saying %q", tc.host, err, statusOf(err), tc.status, tc.why)
			}
		})
	}
	if _, _, err := a.AddCert(ctx, "app1", "shop.example.com"); statusOf(err) != 409 {
		t.Errorf("another app's custom name: %v, want 409", err)
	}
}

// TestPostExistingMachine: registering a machine the app already has is
// refused and changes nothing; PUT updates it.
func TestPostExistingMachine(t *testing.T) {
	ctx := context.Background()
	a := newNode(t, newFly(t, 1), t.TempDir(), testPools)
	m := &routing.Machine{ID: "0000000000aa01", Region: "iad", Address: "10.1.0.1"}
	if created, err := a.PutMachine(ctx, "app0", m, true); err != nil || !created {
		t.Fatalf("register: %v, %t", err, created)
	}
	moved := &routing.Machine{ID: m.ID, Region: "iad", Address: "10.1.0.2"}
	if _, err := a.PutMachine(ctx, "app0", moved, true); statusOf(err) != 409 {
		t.Fatalf("registering it again: %v, want 409", err)
	}
	if got := a.fly.LiveMachines("app0"); len(got) != 1 || got[0].Address != "10.1.0.1" {
		t.Fatalf("after a refused registration: %+v, want the first address", got[0])
	}
	if created, err := a.PutMachine(ctx, "app0", moved, false); err != nil || created {
		t.Fatalf("update: %v, created %t", err, created)
	}
	if got := a.fly.LiveMachines("app0"); got[0].Address != "10.1.0.2" {
		t.Errorf("after the update: %+v", got[0])
	}
}

// TestAppLeftConfig: an app that leaves the config keeps what it held,
// which routes nowhere; its addresses, host names and machines can be
// listed and released, and nothing new is given to it.
func TestAppLeftConfig(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a := newNode(t, newFly(t, 3), dir, testPools)
	v4, _, err := a.Allocate(ctx, "app2", TypeV4)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.AddCert(ctx, "app2", "shop.example.com"); err != nil {
		t.Fatal(err)
	}
	m := &routing.Machine{ID: "0000000000bb01", Region: "iad", Address: "10.2.0.1"}
	if _, err := a.PutMachine(ctx, "app2", m, true); err != nil {
		t.Fatal(err)
	}
	// a reload whose config no longer has app2
	b := newNode(t, newFly(t, 2), dir, testPools)
	if got := appAt(b, netip.MustParseAddr(v4.Address), ""); got != "" {
		t.Errorf("app2's address routes to %q after app2 left the config", got)
	}
	ips, err := b.IPs("app2")
	if err != nil || len(ips) != 1 || ips[0].Address != v4.Address {
		t.Fatalf("listing app2's addresses: %v, %v", ips, err)
	}
	if ms, err := b.Machines("app2"); err != nil || len(ms) != 1 || ms[0].ID != m.ID {
		t.Errorf("listing app2's machines: %v, %v", ms, err)
	}
	if _, _, err := b.Allocate(ctx, "app2", TypeV4); statusOf(err) != 404 {
		t.Errorf("allocating for an app not in the config: %v, want 404", err)
	}
	if err := b.Release(ctx, "app2", v4.Address); err != nil {
		t.Errorf("releasing an address of an app that left the config: %v", err)
	}
	if err := b.RemoveCert(ctx, "app2", "shop.example.com"); err != nil {
		t.Errorf("removing its host name: %v", err)
	}
	if err := b.RemoveMachine(ctx, "app2", m.ID); err != nil {
		t.Errorf("removing its machine: %v", err)
	}
	if _, err := b.IPs("app2"); statusOf(err) != 404 {
		t.Errorf("once it holds nothing: %v, want 404 unknown app", err)
	}
	if v, _, err := b.Allocate(ctx, "app0", TypeV4); err != nil || v.Address != v4.Address {
		t.Errorf("the released address is not given out again: %+v, %v", v, err)
	}
}

// TestFailedStartGivesBack: a config whose start failed is stopped while
// the one before it goes on serving; that one learns the store's changes
// again, those made meanwhile included.
func TestFailedStartGivesBack(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	running := newNode(t, newFly(t, 2), dir, testPools)
	failed := &App{Pools: testPools, AutoAllocate: new(bool)}
	if err := failed.setup(ctx, newFly(t, 2), &certmagic.FileStorage{Path: dir}, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	stores.Delete(failed.storeKey)
	failed.store, failed.storeKey = running.store, "" // one process, one store
	if err := failed.Start(); err != nil {
		t.Fatal(err)
	}
	v4, _, err := running.Allocate(ctx, "app1", TypeV4) // while the new config has the notifications
	if err != nil {
		t.Fatal(err)
	}
	if err := failed.Stop(); err != nil {
		t.Fatal(err)
	}
	if got := appAt(running, netip.MustParseAddr(v4.Address), ""); got != "app1" {
		t.Fatalf("the running config routes the address allocated meanwhile to %q", got)
	}
	m := &routing.Machine{ID: "0000000000cc01", Region: "iad", Address: "10.3.0.1"}
	if _, err := running.PutMachine(ctx, "app1", m, true); err != nil {
		t.Fatal(err)
	}
	if got := running.fly.LiveMachines("app1"); len(got) != 1 {
		t.Errorf("a machine registered after the failed start: %v in the running config", got)
	}
}

// TestExhaustedByAppsGone: a pool exhausted by addresses that apps no
// longer in the config hold says so, naming them and how to release
// them; releasing one gives it out again.
func TestExhaustedByAppsGone(t *testing.T) {
	ctx := context.Background()
	for _, typ := range []string{TypeV4, TypeV6} {
		t.Run(typ, func(t *testing.T) {
			dir := t.TempDir()
			pools := Pools{V4: []string{"127.30.0.1-127.30.0.2"}, V6: []string{"fd00:fe::1-fd00:fe::2"}}
			a := newNode(t, newFly(t, 3), dir, pools)
			var held []Assignment
			for range 2 {
				asg, _, err := a.Allocate(ctx, "app2", typ)
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, asg)
			}
			b := newNode(t, newFly(t, 2), dir, pools) // a reload without app2
			_, _, err := b.Allocate(ctx, "app0", typ)
			want := "the " + typ + " pool is exhausted; 2 of its addresses are held by apps no longer in the config: app2 (2); release with DELETE /fly/apps/app2/ips/<address>"
			if statusOf(err) != 409 || !strings.Contains(fmt.Sprint(err), want) {
				t.Errorf("allocating from a pool that an app gone holds: %v (status %d), want 409 %q", err, statusOf(err), want)
			}
			if err := b.Release(ctx, "app2", held[1].Address); err != nil {
				t.Fatal(err)
			}
			if asg, _, err := b.Allocate(ctx, "app0", typ); err != nil || asg.Address != held[1].Address {
				t.Errorf("after the release: %+v, %v", asg, err)
			}
			if _, _, err := b.Allocate(ctx, "app1", typ); statusOf(err) != 409 || !strings.Contains(err.Error(), "1 of its addresses is held by an app no longer in the config: app2 (1); release with DELETE /fly/apps/app2/ips/<address>") {
				t.Errorf("exhausted again: %v", err)
			}
		})
	}
}
