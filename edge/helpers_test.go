package edge

import (
	"net"

	"github.com/flyedge/caddy-flyedge/routing"
)

// portOf returns the port of a listener.
func portOf(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

// tcpApp is an app with one service on edge port port, handlers
// handlers, and no machine.
func tcpApp(port, internal int, handlers []string) *routing.Application {
	return &routing.Application{Services: []*routing.Service{{InternalPort: internal, Ports: []*routing.Port{{Port: port, Handlers: handlers}}}}}
}
