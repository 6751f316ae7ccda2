package flyhandlers

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/flyedge/caddy-flyedge/routing"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/ipv4"
)

// UDP on the edge, as Fly.io serves it: on an app's dedicated IPv4
// addresses only, on the ports of its udp services. The edge holds one
// socket per UDP port on the wildcard address and learns each datagram's
// destination from IP_PKTINFO, so one socket serves every app's address
// and answers come back from the address and port the client sent to.
// (caddy-l4's UDP server cannot tell the destination of a datagram on a
// wildcard socket, which the resolver needs, hence this.)
//
// A flow is a client address and port and the edge address and port it
// sent to. Its first datagram picks a machine (the nearest available,
// under the service's concurrency limits, a flow counting as a
// connection), and the flow stays on that machine while datagrams move
// either way; after the idle timeout it ends, and the next datagram
// starts a new one. Each flow has its own socket towards the machine.
// The machine is reached through routing.Route.Connect, as every
// protocol's is. A machine that answers with an ICMP error (nothing
// listens) is left out for the fly app's failover fail_duration and the
// flow ends, so the client's next datagram goes to another machine.
//
// Datagrams the edge does not serve are dropped: to a shared or IPv6
// address, to an address no app holds, to a port the app has no udp
// service on, for an app with no machine available, and beyond an app's
// flow limit.

const (
	// udpBufSize is the largest datagram the edge relays either way:
	// jumbo frames, as caddy-l4 does. Longer ones are cut.
	udpBufSize = 9000

	// maxUDPFlowsPerApp bounds the flows (and so the sockets towards
	// machines) one app's clients can open on an edge, over all its UDP
	// ports; beyond it new flows' datagrams are dropped, and other apps
	// are not affected.
	maxUDPFlowsPerApp = 4096

	// maxUDPFlowsPerClient bounds the flows of one client address, so one
	// client cannot take an app's flows from the others.
	maxUDPFlowsPerClient = 256

	// DefaultUDPIdleTimeout is how long a flow lasts with no datagram
	// either way.
	DefaultUDPIdleTimeout = 30 * time.Second
)

// udpKey identifies a flow: the client, and the edge address it sent to
// (the port is the socket's).
type udpKey struct {
	client netip.AddrPort
	dst    netip.Addr
}

// udpQuota counts flows per app and per client address over all of an
// edge's UDP ports.
type udpQuota struct {
	max       int          // flows in all
	ports     []*udpPort   // whose flows sweep may end
	lastSweep atomic.Int64 // when sweep last ran, in Unix nanoseconds
	mu        sync.Mutex
	total     int
	apps      map[string]int
	clients   map[netip.Addr]int
}

// take counts a new flow of app from client, unless either is at its
// limit, or the edge; full then says which bound is full ("app",
// "client" or "edge").
func (q *udpQuota) take(app string, client netip.Addr) (full string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.total >= q.max:
		return "edge"
	case q.apps[app] >= maxUDPFlowsPerApp:
		return "app"
	case q.clients[client] >= maxUDPFlowsPerClient:
		return "client"
	}
	q.total++
	q.apps[app]++
	q.clients[client]++
	return ""
}

// udpSweepIdle: when an app (or the edge) is at its bound of flows, the
// flows idle this long or more give their places to new ones: the
// datagrams of a flood, one from each of many source ports, would
// otherwise hold the app's flows for udp_idle_timeout after it ends. A
// client of an ended flow that sends again gets a new flow.
const udpSweepIdle = time.Second

// sweep ends the flows of app (of every app when app is "") idle
// udpSweepIdle or more, at most once every udpSweepIdle/4; their places
// are given back as their relays end.
func (q *udpQuota) sweep(app string) {
	now := time.Now().UnixNano()
	last := q.lastSweep.Load()
	if now-last < int64(udpSweepIdle/4) || !q.lastSweep.CompareAndSwap(last, now) {
		return
	}
	for _, u := range q.ports {
		u.mu.Lock()
		for _, f := range u.flows {
			if (app == "" || f.rt.App == app) && now-f.lastSeen.Load() >= int64(udpSweepIdle) {
				f.close()
			}
		}
		u.mu.Unlock()
	}
}

// give forgets a flow take counted.
func (q *udpQuota) give(app string, client netip.Addr) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.total--
	if q.apps[app]--; q.apps[app] <= 0 {
		delete(q.apps, app)
	}
	if q.clients[client]--; q.clients[client] <= 0 {
		delete(q.clients, client)
	}
}

// udpPort is the edge's socket on one UDP port and its flows.
type udpPort struct {
	port   int
	conn   *net.UDPConn
	fly    *routing.App
	idle   time.Duration
	log    *zap.Logger
	quota  *udpQuota
	mu     sync.Mutex
	flows  map[udpKey]*udpFlow
	closed bool // no flow starts any more
	wg     sync.WaitGroup
}

// udpFlow is one client's flow to one machine.
type udpFlow struct {
	key      udpKey
	rt       *routing.Route
	machine  int
	up       *net.UDPConn
	lastSeen atomic.Int64 // unix nanoseconds of the latest datagram either way
	in, out  atomic.Int64
	done     chan struct{}
	once     sync.Once
}

// serve reads datagrams until the socket is closed. It reads the
// destination from the IP_PKTINFO message by hand: x/net's parser
// allocates for each datagram.
func (u *udpPort) serve() {
	buf := make([]byte, udpBufSize)
	oob := make([]byte, 128)
	var delay time.Duration
	for {
		n, oobn, _, src, err := u.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			u.mu.Lock()
			closed := u.closed
			u.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			// anything else (a shortage of buffers, say) passes: the port
			// goes on after a backoff, as the edge's accept loops do
			if delay == 0 {
				delay = 5 * time.Millisecond
				u.log.Error("reading datagrams; retrying", zap.Int("port", u.port), zap.Error(err))
			} else {
				delay = min(2*delay, time.Second)
			}
			time.Sleep(delay)
			continue
		}
		delay = 0
		dst, ok := pktinfoDst(oob[:oobn])
		if !ok {
			continue
		}
		f := u.flow(udpKey{client: netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), dst: dst})
		if f == nil {
			continue
		}
		f.lastSeen.Store(time.Now().UnixNano())
		if _, err := f.up.Write(buf[:n]); err != nil {
			u.machineFailed(f, err)
			continue
		}
		f.in.Add(int64(n))
	}
}

// flow returns the flow of key, starting one when there is none and the
// datagram is for an app's udp service; nil drops the datagram.
func (u *udpPort) flow(key udpKey) *udpFlow {
	u.mu.Lock()
	f := u.flows[key]
	u.mu.Unlock()
	if f != nil {
		return f
	}
	rt, err := u.fly.ResolveUDP(key.dst, u.port)
	if err != nil {
		if c := u.log.Check(zapcore.DebugLevel, "datagram dropped"); c != nil {
			c.Write(zap.String("client", key.client.String()), zap.String("local", netip.AddrPortFrom(key.dst, uint16(u.port)).String()), zap.Error(err))
		}
		return nil
	}
	if full := u.quota.take(rt.App, key.client.Addr()); full != "" {
		switch full {
		case "app":
			u.quota.sweep(rt.App)
		case "edge":
			u.quota.sweep("")
		}
		if c := u.log.Check(zapcore.DebugLevel, "datagram dropped: too many flows"); c != nil {
			c.Write(zap.String("app", rt.App), zap.String("client", key.client.String()), zap.Int("per_app", maxUDPFlowsPerApp), zap.Int("per_client", maxUDPFlowsPerClient), zap.Int("max_udp_flows", u.quota.max))
		}
		return nil
	}
	f, err = u.start(key, rt)
	if err != nil {
		u.quota.give(rt.App, key.client.Addr())
		if c := u.log.Check(zapcore.DebugLevel, "datagram dropped"); c != nil {
			c.Write(zap.String("app", rt.App), zap.String("client", key.client.String()), zap.Error(err))
		}
		return nil
	}
	u.mu.Lock()
	if u.closed { // the edge stopped meanwhile
		u.mu.Unlock()
		f.close()
		f.rt.Release(f.machine)
		u.quota.give(rt.App, key.client.Addr())
		return nil
	}
	u.flows[key] = f
	u.wg.Add(1) // under mu, so never after close's Wait began
	u.mu.Unlock()
	go func() {
		defer u.wg.Done()
		u.relayBack(f)
	}()
	return f
}

// start picks the flow's machine and opens its socket towards it. The
// port's reader calls it, so it never waits for a machine at its hard
// limit (noWait): a flow goes to a machine with room now, or its
// datagram is dropped.
func (u *udpPort) start(key udpKey, rt *routing.Route) (*udpFlow, error) {
	conn, i, _, err := rt.Connect(noWait, routing.Preference{}, routing.Failover{}, func(i int) (net.Conn, error) {
		addr, err := machineUDPAddr(rt.MachineDial(i))
		if err != nil {
			return nil, err
		}
		up, err := net.DialUDP("udp", nil, addr)
		if err != nil {
			return nil, err
		}
		return up, nil
	})
	if err != nil {
		return nil, err
	}
	// the flow's end gives the machine's unit back (rt.Release, as Connect's release func)
	f := &udpFlow{key: key, rt: rt, machine: i, up: conn.(*net.UDPConn), done: make(chan struct{})}
	f.lastSeen.Store(time.Now().UnixNano())
	if c := u.log.Check(zapcore.DebugLevel, "udp flow started"); c != nil {
		c.Write(zap.String("app", rt.App), zap.String("machine", rt.MachineID(i)), zap.String("client", key.client.String()))
	}
	return f, nil
}

// noWait is a context that is already done: Connect takes a machine only
// if one has room now, and tries no other after a failure.
var noWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// machineUDPAddr returns a machine's address: a literal IP at once, a
// host name looked up within 500ms (the port's reader waits meanwhile;
// give UDP machines IP addresses).
func machineUDPAddr(dial string) (*net.UDPAddr, error) {
	if ap, err := netip.ParseAddrPort(dial); err == nil {
		return net.UDPAddrFromAddrPort(ap), nil
	}
	host, port, err := net.SplitHostPort(dial)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return nil, fmt.Errorf("looking up %s: %v", host, err)
	}
	p, _ := strconv.Atoi(port)
	return net.UDPAddrFromAddrPort(netip.AddrPortFrom(ips[0].Unmap(), uint16(p))), nil
}

// relayBack sends the machine's datagrams to the client, from the address
// the client sent to, until the flow is idle, fails or the app goes.
func (u *udpPort) relayBack(f *udpFlow) {
	defer u.end(f)
	defer f.rt.OpenConn()()
	stop := context.AfterFunc(f.rt.AppContext(), func() { f.close() })
	defer stop()
	buf := make([]byte, udpBufSize)
	src := (&ipv4.ControlMessage{Src: f.key.dst.AsSlice()}).Marshal() // answer from the address the client sent to
	_ = f.up.SetReadDeadline(time.Now().Add(u.idle))
	for {
		n, err := f.up.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				last := time.Unix(0, f.lastSeen.Load())
				if time.Since(last) < u.idle {
					_ = f.up.SetReadDeadline(last.Add(u.idle)) // datagrams moved meanwhile
					continue
				}
				return
			}
			select {
			case <-f.done:
			default:
				u.machineFailed(f, err)
			}
			return
		}
		f.lastSeen.Store(time.Now().UnixNano())
		if _, _, err := u.conn.WriteMsgUDPAddrPort(buf[:n], src, f.key.client); err != nil {
			if c := u.log.Check(zapcore.DebugLevel, "udp answer not sent"); c != nil {
				c.Write(zap.String("app", f.rt.App), zap.String("client", f.key.client.String()), zap.Error(err))
			}
			continue
		}
		f.out.Add(int64(n))
	}
}

// machineFailed leaves the flow's machine out for a while (it answered a
// datagram with an ICMP error: nothing listens there) and ends the flow.
func (u *udpPort) machineFailed(f *udpFlow, err error) {
	if errors.Is(err, syscall.ECONNREFUSED) {
		f.rt.MachineFailed(f.machine)
	}
	if c := u.log.Check(zapcore.DebugLevel, "udp flow failed"); c != nil {
		c.Write(zap.String("app", f.rt.App), zap.String("machine", f.rt.MachineID(f.machine)), zap.Error(err))
	}
	u.forget(f) // the next datagram starts a new flow
	f.close()
}

// forget takes the flow out of the port's flows before its socket closes,
// so no datagram of its client is written to a closed socket meanwhile:
// the next one starts a new flow.
func (u *udpPort) forget(f *udpFlow) {
	u.mu.Lock()
	if u.flows[f.key] == f {
		delete(u.flows, f.key)
	}
	u.mu.Unlock()
}

func (f *udpFlow) close() {
	f.once.Do(func() {
		close(f.done)
		_ = f.up.Close()
	})
}

// end forgets the flow and gives back its machine's slot.
func (u *udpPort) end(f *udpFlow) {
	u.forget(f)
	f.close()
	u.quota.give(f.rt.App, f.key.client.Addr())
	f.rt.Release(f.machine)
	f.rt.CountBytes(f.in.Load(), f.out.Load())
	if c := u.log.Check(zapcore.DebugLevel, "udp flow ended"); c != nil {
		c.Write(zap.String("app", f.rt.App), zap.String("machine", f.rt.MachineID(f.machine)), zap.String("client", f.key.client.String()), zap.Int64("in", f.in.Load()), zap.Int64("out", f.out.Load()))
	}
}

// close closes the socket and every flow, and waits for them.
func (u *udpPort) close() {
	_ = u.conn.Close()
	u.mu.Lock()
	u.closed = true
	for _, f := range u.flows {
		f.close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// UDP is the edge's UDP: a socket on each of its UDP ports and their
// flows. The edge (package edge) starts it with its udp_ports and closes
// it when it stops.
type UDP struct {
	ports []*udpPort
	wg    sync.WaitGroup
}

// ListenUDP listens on ports for fly's apps, a flow ending after idle
// with no datagram either way, and at most maxFlows flows at once (0: no
// bound of all, only the per-app and per-client ones).
func ListenUDP(fly *routing.App, ports map[int]bool, idle time.Duration, maxFlows int, log *zap.Logger) (*UDP, error) {
	s := new(UDP)
	if maxFlows <= 0 {
		maxFlows = math.MaxInt
	}
	quota := &udpQuota{max: maxFlows, apps: make(map[string]int), clients: make(map[netip.Addr]int)}
	for port := range ports {
		conn, err := listenUDP(port)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("listening on udp port %d: %w", port, err)
		}
		u := &udpPort{port: port, conn: conn, fly: fly, idle: idle, log: log, flows: make(map[udpKey]*udpFlow), quota: quota}
		s.ports = append(s.ports, u)
	}
	quota.ports = s.ports // before any port reads: sweep reads it
	for _, u := range s.ports {
		s.wg.Go(u.serve)
	}
	return s, nil
}

// Close closes the sockets and every flow, and waits for them.
func (s *UDP) Close() {
	for _, u := range s.ports {
		u.close()
	}
	s.wg.Wait()
}
