package edge

import (
	"net"
	"testing"
)

// TestSetLimits: the default limits come from the open-file limit, keep
// an eighth of it (at least 256) free, give UDP flows a quarter of the
// rest when the edge has UDP ports, and a client a sixteenth of the
// connections (at least 64); what the config sets stays.
func TestSetLimits(t *testing.T) {
	for _, tc := range []struct {
		name                                string
		limit                               int
		ports, udpPorts                     []string
		conns, perClient                    int // the config's max_connections, max_connections_per_client
		wantConns, wantPerClient, wantFlows int
	}{
		{"small", 400, []string{"80", "443"}, nil, 0, 0, 71, 64, 0},
		{"large", 1 << 20, []string{"80", "443", "10000-10999"}, []string{"53"}, 0, 0, 343688, 21480, 229125},
		{"set", 1 << 20, []string{"80"}, nil, 1000, 10, 1000, 10, 0},
		{"per client above all", 400, []string{"80"}, nil, 10, 0, 10, 10, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &Edge{Ports: tc.ports, UDPPorts: tc.udpPorts, MaxConnections: tc.conns, MaxConnectionsPerClient: tc.perClient}
			if err := e.setPorts(); err != nil {
				t.Fatal(err)
			}
			e.setLimits(tc.limit)
			if e.MaxConnections != tc.wantConns || e.MaxConnectionsPerClient != tc.wantPerClient || e.MaxUDPFlows != tc.wantFlows {
				t.Errorf("limit %d: max_connections %d, per client %d, max_udp_flows %d; want %d, %d, %d",
					tc.limit, e.MaxConnections, e.MaxConnectionsPerClient, e.MaxUDPFlows, tc.wantConns, tc.wantPerClient, tc.wantFlows)
			}
		})
	}
}

// TestConnLimits: a client is counted by its IPv4 address or its IPv6
// /64, holds at most its share, and gives its places back.
func TestConnLimits(t *testing.T) {
	l := newConnLimits(5, 2)
	a := clientKey(&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 1})
	b := clientKey(&net.TCPAddr{IP: net.ParseIP("2001:db8::ffff"), Port: 2})
	if a != b {
		t.Fatalf("two addresses of one /64 are two clients: %v, %v", a, b)
	}
	if !l.take(a) || !l.take(b) || l.take(a) {
		t.Fatal("a /64 holds other than its 2 connections")
	}
	c := clientKey(&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.1"), Port: 3})
	d := clientKey(&net.TCPAddr{IP: net.ParseIP("192.0.2.2"), Port: 4})
	if !l.take(c) || !l.take(c) || !l.take(d) || l.take(d) {
		t.Fatal("the edge holds other than its 5 connections")
	}
	l.give(a)
	if !l.take(d) {
		t.Fatal("a connection that closed did not give its place back")
	}
}
