package flyhandlers

import (
	"github.com/flyedge/caddy-flyedge/routing"
	"math"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestUDPQuota: one client address gets at most maxUDPFlowsPerClient
// flows, one app at most maxUDPFlowsPerApp over all clients, and a flow
// that ends frees its place.
func TestUDPQuota(t *testing.T) {
	q := &udpQuota{max: math.MaxInt, apps: map[string]int{}, clients: map[netip.Addr]int{}}
	one := netip.MustParseAddr("192.0.2.1")
	for range maxUDPFlowsPerClient {
		if !took(q, "game", one) {
			t.Fatal("refused below the per-client limit")
		}
	}
	if took(q, "game", one) || took(q, "other", one) {
		t.Fatal("a client over its limit got another flow")
	}
	q.give("game", one)
	if !took(q, "other", one) {
		t.Fatal("a flow that ended did not free its place")
	}
	for i := 0; q.apps["game"] < maxUDPFlowsPerApp; i++ {
		if !took(q, "game", netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})) {
			t.Fatalf("refused below the per-app limit at %d", q.apps["game"])
		}
	}
	if took(q, "game", netip.MustParseAddr("203.0.113.9")) {
		t.Fatal("an app over its limit got another flow")
	}
	if !took(q, "other", netip.MustParseAddr("203.0.113.9")) {
		t.Fatal("another app was refused because of game's flows")
	}
}

// TestUDPQuotaTotal: the edge's flows in all are bounded (max_udp_flows:
// each holds a socket), whatever the apps and clients, and a flow that
// ends frees its place.
func TestUDPQuotaTotal(t *testing.T) {
	q := &udpQuota{max: 300, apps: map[string]int{}, clients: map[netip.Addr]int{}}
	for i := range 300 {
		app := []string{"a", "b", "c", "d", "e"}[i%5]
		if !took(q, app, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})) {
			t.Fatalf("refused below the edge's limit at %d", i)
		}
	}
	if took(q, "f", netip.MustParseAddr("203.0.113.9")) {
		t.Fatal("a flow over the edge's limit was taken")
	}
	q.give("a", netip.AddrFrom4([4]byte{198, 51, 100, 0}))
	if !took(q, "f", netip.MustParseAddr("203.0.113.9")) {
		t.Fatal("a flow that ended did not free its place")
	}
}

// took tells whether q took a flow of app from client.
func took(q *udpQuota, app string, client netip.Addr) bool { return q.take(app, client) == "" }

// TestUDPSweep: at its bound, an app's flows idle a second or more end
// (their places go to new flows), its busy flows and other apps' stay.
func TestUDPSweep(t *testing.T) {
	q := &udpQuota{max: math.MaxInt, apps: map[string]int{}, clients: map[netip.Addr]int{}}
	u := &udpPort{flows: map[udpKey]*udpFlow{}, quota: q}
	q.ports = []*udpPort{u}
	flow := func(app string, i int, idle time.Duration) *udpFlow {
		up, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { up.Close() })
		f := &udpFlow{key: udpKey{client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 5000)}, rt: &routing.Route{App: app}, up: up, done: make(chan struct{})}
		f.lastSeen.Store(time.Now().Add(-idle).UnixNano())
		u.flows[f.key] = f
		return f
	}
	idle, busy, other := flow("game", 1, 2*time.Second), flow("game", 2, 0), flow("chat", 3, time.Minute)
	q.sweep("game")
	for _, c := range []struct {
		name  string
		f     *udpFlow
		ended bool
	}{{"idle flow of the full app", idle, true}, {"busy flow", busy, false}, {"other app's flow", other, false}} {
		select {
		case <-c.f.done:
			if !c.ended {
				t.Errorf("%s ended", c.name)
			}
		default:
			if c.ended {
				t.Errorf("%s goes on", c.name)
			}
		}
	}
}
