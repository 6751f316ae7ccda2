package edge

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// The descriptors the edge's connections and UDP flows may hold are
// bounded so that the process stays under its open-file limit by design
// (an accept that fails with EMFILE is retried, but a tenant must not be
// able to get the edge there): a TCP connection holds two, the client's
// and the machine's, and a UDP flow one, its socket towards the machine.
const (
	// reserveMin and reserveShare: the descriptors kept free of
	// connections and flows, for the admin endpoint, health checks,
	// storage, certificates, logs and the listeners themselves: an
	// eighth of the limit, and at least 256.
	reserveMin   = 256
	reserveShare = 8

	// udpShare: the part of the rest UDP flows may hold (a quarter), so
	// that datagrams alone cannot refuse TCP connections.
	udpShare = 4

	// perClientShare: one client address (IPv6: its /64) holds at most
	// this part of the edge's connections (a sixteenth), and at least
	// perClientMin of them.
	perClientShare = 16
	perClientMin   = 64

	// acceptBackoffMax is the longest wait between accepts that fail
	// (EMFILE, ENFILE, ...), as net/http's.
	acceptBackoffMax = time.Second
)

// fileLimit returns the process's open-file limit (Go raises the soft
// limit to the hard one at start), 0 when it cannot tell.
func fileLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return 0
	}
	return int(rl.Cur)
}

// setLimits fills in the connection and flow limits the config leaves
// out, from limit (the open-file limit) and the edge's listening
// sockets.
func (e *Edge) setLimits(limit int) {
	sockets := 0
	for _, na := range e.addrs {
		sockets += int(na.PortRangeSize())
	}
	sockets += len(e.udpPorts)
	if limit == 0 {
		limit = 1 << 20
	}
	avail := max(limit-max(reserveMin, limit/reserveShare)-sockets, 0)
	if e.MaxUDPFlows == 0 && len(e.udpPorts) > 0 {
		e.MaxUDPFlows = max(avail/udpShare, 1)
	}
	if e.MaxConnections == 0 {
		e.MaxConnections = max((avail-e.MaxUDPFlows)/2, perClientMin)
	}
	if e.MaxConnectionsPerClient == 0 {
		e.MaxConnectionsPerClient = min(max(e.MaxConnections/perClientShare, perClientMin), e.MaxConnections)
	}
}

// connLimits counts the edge's TCP connections, in all and per client
// address.
type connLimits struct {
	max, perClient int

	mu      sync.Mutex
	total   int
	clients map[netip.Addr]int
}

func newConnLimits(max, perClient int) *connLimits {
	return &connLimits{max: max, perClient: perClient, clients: make(map[netip.Addr]int)}
}

// clientKey is what one client is counted by: its IPv4 address, or the
// /64 of its IPv6 address (one host's share of a network).
func clientKey(addr net.Addr) netip.Addr {
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return netip.Addr{}
	}
	ip := ap.Addr().Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// take counts a connection of client, unless the edge or the client is
// at its limit.
func (l *connLimits) take(client netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= l.max || l.clients[client] >= l.perClient {
		return false
	}
	l.total++
	l.clients[client]++
	return true
}

// give forgets a connection take counted.
func (l *connLimits) give(client netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.clients[client]--; l.clients[client] <= 0 {
		delete(l.clients, client)
	}
}

// countedConn is an accepted connection that gives its place back when
// it is closed, whoever closes it (a handler, or the HTTP server it was
// handed to). The relay splices its TCP connection
// (flyhandlers.TCPWrapper).
type countedConn struct {
	*tcp
	once   sync.Once
	limits *connLimits
	client netip.Addr
}

// Close closes the connection and gives its place back, once.
func (c *countedConn) Close() error {
	err := c.tcp.Close()
	c.once.Do(func() { c.limits.give(c.client) })
	return err
}

// TCPConn returns the TCP connection.
func (c *countedConn) TCPConn() *net.TCPConn { return c.tcp }

// tcp names the TCP connection countedConn embeds, whose methods it
// keeps but Close.
type tcp = net.TCPConn

// admit returns conn counted against the limits, or nil when it is over
// them (the caller closes it).
func (l *connLimits) admit(conn net.Conn) net.Conn {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return conn
	}
	client := clientKey(conn.RemoteAddr())
	if !l.take(client) {
		return nil
	}
	return &countedConn{tcp: tc, limits: l, client: client}
}

// acceptRetry tells whether an accept that failed with err should be
// tried again, after waiting *delay, which it doubles up to
// acceptBackoffMax; the first failure of a run is logged. As net/http's
// server, it retries the errors that say they are temporary: a shortage
// of descriptors (EMFILE, ENFILE) or a connection aborted before it was
// accepted. A closed listener, Caddy's too (whose error is neither
// temporary nor net.ErrClosed), ends the loop.
func acceptRetry(err error, delay *time.Duration, closed bool, logger *zap.Logger) bool {
	var ne interface{ Temporary() bool } // net.Error's, deprecated but what it takes to tell
	if closed || !errors.As(err, &ne) || !ne.Temporary() {
		return false
	}
	if *delay == 0 {
		*delay = 5 * time.Millisecond
		logger.Error("accepting connections; retrying", zap.Error(err))
	} else {
		*delay = min(2**delay, acceptBackoffMax)
	}
	time.Sleep(*delay)
	return true
}
