package testkit

import (
	"net"
	"sync"
	"testing"
)

// CuttableProxy relays TCP connections to a target (a database, a
// machine) until it is cut: then it closes every connection it relays
// and refuses new ones, as a server that went away would, until it is
// restored. Blackhole is the other outage: nothing is refused and
// nothing answers, as when a network drops every packet.
type CuttableProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	down  bool
	hole  bool
	conns map[net.Conn]bool
	held  map[net.Conn]bool // accepted during a blackhole, never relayed
	dead  map[net.Conn]bool // relayed connections left silent for good
}

// NewCuttableProxy listens on a free loopback port and relays to target
// until the test ends.
func NewCuttableProxy(t testing.TB, target string) *CuttableProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &CuttableProxy{ln: ln, conns: map[net.Conn]bool{}, held: map[net.Conn]bool{}, dead: map[net.Conn]bool{}}
	t.Cleanup(func() { ln.Close(); p.Cut(); p.Restore() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.down {
				p.mu.Unlock()
				c.Close()
				continue
			}
			if p.hole {
				p.held[c] = true // accepted, and silent
				p.mu.Unlock()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns[c], p.conns[up] = true, true
			p.mu.Unlock()
			go func() { p.relay(up, c); up.Close() }()
			go func() { p.relay(c, up); c.Close() }()
		}
	}()
	return p
}

// relay copies src to dst, dropping what it reads during a blackhole.
func (p *CuttableProxy) relay(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			hole := p.hole || p.dead[src]
			p.mu.Unlock()
			if !hole {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// Addr is the proxy's address (host:port), to use in place of the
// target's.
func (p *CuttableProxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every relayed connection and refuses new ones.
func (p *CuttableProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	p.closeAll()
}

// Blackhole stops relaying without closing anything: the connections
// stay open and carry nothing either way, and new connections are
// accepted and left without an answer, until Restore.
func (p *CuttableProxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hole = true
}

// Restore relays new connections again. After a blackhole (or
// RestoreForgetting) it first closes the connections that were open
// during it (their bytes were lost, as a peer that gave up on them
// would), so the clients open new ones.
func (p *CuttableProxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hole || len(p.dead) > 0 {
		p.closeAll()
	}
	p.down, p.hole = false, false
}

// RestoreForgetting relays new connections again after a blackhole, and
// leaves the connections that were open during it open and silent for
// good, as connections the server forgot meanwhile (it restarted, or a
// middlebox dropped their state): their client learns of it only by
// sending and getting no answer.
func (p *CuttableProxy) RestoreForgetting() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		p.dead[c] = true
	}
	p.hole = false
}

func (p *CuttableProxy) closeAll() {
	for c := range p.conns {
		c.Close()
	}
	for c := range p.held {
		c.Close()
	}
	p.conns, p.held, p.dead = map[net.Conn]bool{}, map[net.Conn]bool{}, map[net.Conn]bool{}
}
