package edge

import (
	"errors"
	"net"
	"net/netip"
	"strings"
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

	// machineShare: a connection's share of the descriptors is three:
	// the client's, a machine's for layer 4, and one of the HTTP
	// transport's connections to machines (routing.SetMachineConnLimit),
	// which are not tied to one client connection.
	machineShare = 3

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
		e.MaxConnections = max((avail-e.MaxUDPFlows)/machineShare, perClientMin)
	}
	if e.MaxConnectionsPerClient == 0 {
		e.MaxConnectionsPerClient = min(max(e.MaxConnections/perClientShare, perClientMin), e.MaxConnections)
	}
}

// connLimits are a config's bounds on the edge's TCP connections, in all
// and per client address. The counts are the process's (conns), not the
// config's: connections outlive the config that accepted them (a reload
// leaves them open), and each config's bounds apply to all of them.
type connLimits struct {
	max, perClient int
}

// connCounts counts the TCP connections the edge holds, in all and per
// client address, over every config.
type connCounts struct {
	mu      sync.Mutex
	total   int
	clients map[netip.Addr]int
}

var conns = &connCounts{clients: make(map[netip.Addr]int)}

func newConnLimits(max, perClient int) *connLimits {
	return &connLimits{max: max, perClient: perClient}
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

// take counts a connection of client in c, unless that takes the edge
// or the client over l.
func (c *connCounts) take(l *connLimits, client netip.Addr) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.total >= l.max || c.clients[client] >= l.perClient {
		return false
	}
	c.total++
	c.clients[client]++
	return true
}

// give forgets a connection take counted.
func (c *connCounts) give(client netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	if c.clients[client]--; c.clients[client] <= 0 {
		delete(c.clients, client)
	}
}

// countedConn is an accepted connection that gives its place back when
// it is closed, whoever closes it (a handler, or the HTTP server it was
// handed to). The relay splices its TCP connection
// (flyhandlers.TCPWrapper).
type countedConn struct {
	*tcp
	once   sync.Once
	counts *connCounts
	client netip.Addr
}

// Close closes the connection and gives its place back, once.
func (c *countedConn) Close() error {
	err := c.tcp.Close()
	c.once.Do(func() { c.counts.give(c.client) })
	return err
}

// TCPConn returns the TCP connection.
func (c *countedConn) TCPConn() *net.TCPConn { return c.tcp }

// tcp names the TCP connection countedConn embeds, whose methods it
// keeps but Close.
type tcp = net.TCPConn

// admit returns conn counted in counts, or nil when that takes it over
// l (the caller closes it).
func (l *connLimits) admit(counts *connCounts, conn net.Conn) net.Conn {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return conn
	}
	client := clientKey(conn.RemoteAddr())
	if !counts.take(l, client) {
		return nil
	}
	return &countedConn{tcp: tc, counts: counts, client: client}
}

// acceptRetry tells whether an accept that failed with err should be
// tried again, after waiting *delay, which it doubles up to
// acceptBackoffMax; the first failure of a run is logged. As net/http's
// server, it retries the errors that say they are temporary: a shortage
// of descriptors (EMFILE, ENFILE) or a connection aborted before it was
// accepted. A closed listener, Caddy's too (whose error is neither
// temporary nor net.ErrClosed), ends the loop.
func acceptRetry(err error, delay *time.Duration, closed bool, logger *zap.Logger) bool {
	if closed || !acceptRetriable(err) {
		if !closed && !errors.Is(err, net.ErrClosed) && !fakeClosed(err) {
			logger.Error("accepting connections stopped", zap.Error(err))
		}
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

// acceptRetriable tells whether an accept error is one to try again
// after: one that says it is temporary (EMFILE, ENFILE, EINTR, aborted
// connections), and the network errors Linux's accept(2) says to treat
// like EAGAIN, with the shortages of buffers and memory.
func acceptRetriable(err error) bool {
	var ne interface{ Temporary() bool } // net.Error's, deprecated but what tells EMFILE
	if errors.As(err, &ne) && ne.Temporary() {
		return true
	}
	for _, errno := range []syscall.Errno{syscall.ENOBUFS, syscall.ENOMEM, syscall.EPROTO, syscall.ENETDOWN,
		syscall.ENOPROTOOPT, syscall.EHOSTDOWN, syscall.ENONET, syscall.EHOSTUNREACH, syscall.EOPNOTSUPP, syscall.ENETUNREACH, syscall.ECONNABORTED} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

// fakeClosed tells whether err is the accept error of a listener Caddy
// closed for this config while the socket stays open for the next one
// (neither temporary nor net.ErrClosed).
func fakeClosed(err error) bool {
	return strings.Contains(err.Error(), "'closed'")
}
