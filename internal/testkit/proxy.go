package testkit

import (
	"io"
	"net"
	"sync"
	"testing"
)

// CuttableProxy relays TCP connections to a target (a database, a
// machine) until it is cut: then it closes every connection it relays
// and refuses new ones, as a server that went away would, until it is
// restored.
type CuttableProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	down  bool
	conns map[net.Conn]bool
}

// NewCuttableProxy listens on a free loopback port and relays to target
// until the test ends.
func NewCuttableProxy(t testing.TB, target string) *CuttableProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &CuttableProxy{ln: ln, conns: map[net.Conn]bool{}}
	t.Cleanup(func() { ln.Close(); p.Cut() })
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
			up, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns[c], p.conns[up] = true, true
			p.mu.Unlock()
			go func() { io.Copy(up, c); up.Close() }()
			go func() { io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

// Addr is the proxy's address (host:port), to use in place of the
// target's.
func (p *CuttableProxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every relayed connection and refuses new ones.
func (p *CuttableProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]bool{}
}

// Restore relays new connections again.
func (p *CuttableProxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}
