package flyhandlers

import (
	"math"
	"net/netip"
	"testing"
)

// TestUDPQuota: one client address gets at most maxUDPFlowsPerClient
// flows, one app at most maxUDPFlowsPerApp over all clients, and a flow
// that ends frees its place.
func TestUDPQuota(t *testing.T) {
	q := &udpQuota{max: math.MaxInt, apps: map[string]int{}, clients: map[netip.Addr]int{}}
	one := netip.MustParseAddr("192.0.2.1")
	for range maxUDPFlowsPerClient {
		if !q.take("game", one) {
			t.Fatal("refused below the per-client limit")
		}
	}
	if q.take("game", one) || q.take("other", one) {
		t.Fatal("a client over its limit got another flow")
	}
	q.give("game", one)
	if !q.take("other", one) {
		t.Fatal("a flow that ended did not free its place")
	}
	for i := 0; q.apps["game"] < maxUDPFlowsPerApp; i++ {
		if !q.take("game", netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)})) {
			t.Fatalf("refused below the per-app limit at %d", q.apps["game"])
		}
	}
	if q.take("game", netip.MustParseAddr("203.0.113.9")) {
		t.Fatal("an app over its limit got another flow")
	}
	if !q.take("other", netip.MustParseAddr("203.0.113.9")) {
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
		if !q.take(app, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)})) {
			t.Fatalf("refused below the edge's limit at %d", i)
		}
	}
	if q.take("f", netip.MustParseAddr("203.0.113.9")) {
		t.Fatal("a flow over the edge's limit was taken")
	}
	q.give("a", netip.AddrFrom4([4]byte{198, 51, 100, 0}))
	if !q.take("f", netip.MustParseAddr("203.0.113.9")) {
		t.Fatal("a flow that ended did not free its place")
	}
}
