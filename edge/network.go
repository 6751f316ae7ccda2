package edge

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func init() {
	caddy.RegisterNetwork(edgeNetwork, listenEdge)
}

// edgeNetwork is the network of the listeners through which the edge
// hands connections to an HTTP server: a site bound with `bind
// fly/<name>` (listen address fly/<name>:<port>) receives the HTTP
// connections of every edge port, as they arrived (their local and
// remote addresses are the client's), with TLS terminated when the app's
// port asks for it.
const edgeNetwork = "fly"

// listenEdge is the caddy.ListenerFunc of the fly network: every call
// makes a new listener of that name; the newest open one gets the
// connections (a config load starts the new HTTP server before it stops
// the old one).
func listenEdge(_ context.Context, _, host, portRange string, portOffset uint, _ net.ListenConfig) (any, error) {
	if host == "" {
		return nil, fmt.Errorf("fly/%s: a listener of the fly network needs a name (bind fly/edge)", portRange)
	}
	l := &edgeListener{
		name:  host,
		addr:  edgeAddr(host),
		conns: make(chan net.Conn),
		done:  make(chan struct{}),
	}
	edgeListeners.add(l)
	return l, nil
}

// edgeListener is one HTTP server's listener of the fly network.
type edgeListener struct {
	name  string
	addr  edgeAddr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func (l *edgeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *edgeListener) Close() error {
	l.once.Do(func() {
		close(l.done)
		edgeListeners.remove(l)
	})
	return nil
}

func (l *edgeListener) Addr() net.Addr { return l.addr }

// edgeAddr is the address of an edge listener: fly/<name>.
type edgeAddr string

func (a edgeAddr) Network() string { return edgeNetwork }
func (a edgeAddr) String() string  { return edgeNetwork + "/" + string(a) }

// edgeListeners are the open listeners of the fly network, by name,
// oldest first.
var edgeListeners = &edgeRegistry{byName: make(map[string][]*edgeListener), changed: make(chan struct{})}

type edgeRegistry struct {
	mu      sync.Mutex
	byName  map[string][]*edgeListener
	changed chan struct{} // closed and replaced when a listener is added
}

func (r *edgeRegistry) add(l *edgeListener) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byName[l.name] = append(r.byName[l.name], l)
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *edgeRegistry) remove(l *edgeListener) {
	r.mu.Lock()
	defer r.mu.Unlock()
	list := r.byName[l.name]
	for i, x := range list {
		if x == l {
			r.byName[l.name] = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(r.byName[l.name]) == 0 {
		delete(r.byName, l.name)
	}
}

// newest returns the newest open listener of name, or nil and a channel
// closed when a listener is added.
func (r *edgeRegistry) newest(name string) (*edgeListener, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if list := r.byName[name]; len(list) > 0 {
		return list[len(list)-1], nil
	}
	return nil, r.changed
}

// deliverTo hands c to the newest HTTP server listening on fly/<name>,
// waiting at most wait for one to listen (the HTTP server may start
// after the edge). It returns errHandedOff once the server has it.
func deliverTo(name string, c net.Conn, wait time.Duration) error {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		l, added := edgeListeners.newest(name)
		if l == nil {
			select {
			case <-added:
				continue
			case <-timer.C:
				return fmt.Errorf("no HTTP server listens on fly/%s: bind a site to it (bind fly/%s)", name, name)
			}
		}
		select {
		case l.conns <- c:
			return errHandedOff
		case <-l.done:
			continue // closed meanwhile: the next newest
		case <-timer.C:
			return fmt.Errorf("the HTTP server on fly/%s accepts no connection", name)
		}
	}
}
