package edge

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
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
		{"small", 1000, []string{"80", "443"}, nil, 0, 0, 247, 64, 0},
		{"large", 1 << 20, []string{"80", "443", "10000-10999"}, []string{"53"}, 0, 0, 229125, 14320, 229125},
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
// /64, holds at most its share, and gives its places back; the counts
// outlive a config (a reload leaves its connections open), and the new
// config's bounds apply to them.
func TestConnLimits(t *testing.T) {
	counts := &connCounts{clients: make(map[netip.Addr]int)}
	l := &takeWith{counts, newConnLimits(5, 2)}
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
	counts.give(a)
	if !l.take(d) {
		t.Fatal("a connection that closed did not give its place back")
	}
	reloaded := &takeWith{counts, newConnLimits(5, 2)}
	if reloaded.take(netip.MustParseAddr("198.51.100.1")) {
		t.Fatal("a reload gave the edge room its old connections still hold")
	}
	counts.give(c)
	if !reloaded.take(netip.MustParseAddr("198.51.100.1")) {
		t.Fatal("an old config's connection that closed did not give its place back")
	}
}

// takeWith takes from counts under limits.
type takeWith struct {
	counts *connCounts
	limits *connLimits
}

func (tw *takeWith) take(client netip.Addr) bool { return tw.counts.take(tw.limits, client) }

// TestAcceptRetriable: the accept errors a port goes on after are the
// shortages (descriptors, buffers, memory) and the network errors
// accept(2) says to retry; a closed listener's is not one.
func TestAcceptRetriable(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EPROTO, syscall.ENETDOWN, syscall.ECONNABORTED} {
		err := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", errno)}
		if !acceptRetriable(err) {
			t.Errorf("%v: not retried", err)
		}
	}
	for _, err := range []error{net.ErrClosed, &net.OpError{Op: "accept", Net: "tcp", Err: errors.New("QUIC listener 'closed' 😉")}} {
		if acceptRetriable(err) {
			t.Errorf("%v: retried", err)
		}
	}
}
