package routing

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// The resolver answers one question for every flyedge module: which app,
// and which of its service ports, gets a connection or request that
// arrived on (local address, port) naming a server (TLS SNI or HTTP
// Host), or none (default deny). Matchers, handlers, listener wrappers
// and the TLS permission all ask Resolve, so they cannot disagree.
//
// With address routing on (the fly_ips app has ingress pools):
//
//   - a dedicated address (v6 or v4) belongs to the app that holds it,
//     whatever the name;
//   - on a shared address, the app that answers to the name and holds
//     the address; an unknown or missing name is denied;
//   - any other address is denied.
//
// Without it, a port plays the part of the address: a port only one app
// has a service on belongs to that app, whatever the name; on a port
// several apps serve, the app that answers to the name; a port no app
// serves is denied.
//
// Then the app's service on the port is the route; an app without one
// gets ErrNoService.

// ErrDenied means that no app is reachable at the connection's address.
var ErrDenied = errors.New("no app is reachable at this address")

// ErrNoApp means that no app answers to the host name of a request or
// connection on an address or port that several apps share.
var ErrNoApp = errors.New("no app answers to this host name")

// ErrNoService means that the app has no service on the edge port.
var ErrNoService = errors.New("the app has no service on this port")

// ErrMisdirected means that a request's host name reaches another app
// than the TLS server name its connection was set up for (a client that
// completed the handshake for one app's name and asks for another's).
var ErrMisdirected = errors.New("misdirected request")

// Resolve returns the route of a connection or request that arrived on
// local naming server name (the TLS server name or the HTTP host, any
// case, without port; "" for none), or the reason it reaches no app.
// Its cost does not grow with the number of apps, addresses or names.
func (a *App) Resolve(local net.Addr, name string) (*Route, error) {
	return a.resolve(AddrOf(local), portOf(local), normalizeName(name))
}

func (a *App) resolve(addr netip.Addr, port int, name string) (*Route, error) {
	reg := a.reg
	reg.mu.RLock()
	if !reg.byAddress {
		defer reg.mu.RUnlock()
		return reg.resolvePort(port, name)
	}
	app := reg.dedicated[addr]
	if app == "" && reg.sharedAddrs[addr] {
		app = reg.hostApp(name).app
		if app != "" && !reg.shared[sharedKey{addr, app}] {
			app = ""
		}
	}
	var slot *appSlot
	if app != "" {
		slot = reg.apps[app]
	}
	reg.mu.RUnlock()
	switch {
	case app == "" && name == "":
		return nil, fmt.Errorf("%w: %s", ErrDenied, addr)
	case app == "":
		return nil, fmt.Errorf("%w: %s for %q", ErrDenied, addr, name)
	case slot == nil:
		return nil, fmt.Errorf("%w: %s (app %s is not configured)", ErrDenied, addr, app)
	}
	return slot.load().route(port)
}

// resolvePort is the rule without address routing: the port decides when
// one app serves it, else the name among the apps that do. The caller
// holds reg.mu for reading.
func (reg *registry) resolvePort(port int, name string) (*Route, error) {
	slots := reg.ports[port]
	if len(slots) == 1 {
		for _, slot := range slots {
			return slot.load().route(port)
		}
	}
	app := reg.hostApp(name).app
	if app == "" {
		if len(slots) == 0 {
			return nil, fmt.Errorf("%w: no app has a service on port %d", ErrDenied, port)
		}
		if name == "" {
			return nil, fmt.Errorf("%w: %d apps have a service on port %d and the client named none", ErrNoApp, len(slots), port)
		}
		return nil, fmt.Errorf("%w: %q", ErrNoApp, name)
	}
	slot := reg.apps[app]
	if slot == nil {
		return nil, fmt.Errorf("%w: %q (app %s is not configured)", ErrNoApp, name, app)
	}
	return slot.load().route(port)
}

// ErrNotDedicatedV4 means that a datagram came to an address that is no
// app's dedicated IPv4 address: UDP is served there only.
var ErrNotDedicatedV4 = errors.New("UDP is served on an app's dedicated IPv4 addresses only")

// ResolveUDP returns the route of a datagram that arrived at dst:port:
// the udp service of the app whose dedicated IPv4 address dst is. On a
// shared or IPv6 address, or an address no app holds, it is denied.
func (a *App) ResolveUDP(dst netip.Addr, port int) (*Route, error) {
	dst = dst.Unmap()
	reg := a.reg
	reg.mu.RLock()
	var app string
	if dst.Is4() {
		app = reg.dedicated[dst]
	}
	var slot *appSlot
	if app != "" {
		slot = reg.apps[app]
	}
	reg.mu.RUnlock()
	if slot == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotDedicatedV4, dst)
	}
	e := slot.load()
	rt := e.udp[port]
	if rt == nil {
		return nil, fmt.Errorf("%w: app %s, udp port %d", ErrNoService, e.name, port)
	}
	return rt, nil
}

func (e *appEntry) route(port int) (*Route, error) {
	rt := e.routes[port]
	if rt == nil {
		return nil, fmt.Errorf("%w: app %s, port %d", ErrNoService, e.name, port)
	}
	return rt, nil
}

// NameDecides tells whether the server name takes part in Resolve's
// answer for a connection to local: on a shared address, or, without
// address routing, on a port several apps serve. A layer 4 matcher reads
// the TLS ClientHello only then, so that protocols where the server
// speaks first work on the other addresses and ports.
func (a *App) NameDecides(local net.Addr) bool {
	addr := AddrOf(local)
	reg := a.reg
	reg.mu.RLock()
	defer reg.mu.RUnlock()
	if reg.byAddress {
		return reg.dedicated[addr] == "" && reg.sharedAddrs[addr]
	}
	return len(reg.ports[portOf(local)]) > 1
}

// HostApp returns the app that answers to host name name (any case): its
// <app>.<base_domain>, a host name of its config or one added through the
// certs API; an exact name first, then a wildcard for the first label.
// "" means none.
func (a *App) HostApp(name string) string {
	a.reg.mu.RLock()
	defer a.reg.mu.RUnlock()
	return a.reg.hostApp(normalizeName(name)).app
}

// hostMatch is the host index's answer for a name: the app that answers
// to it, and by which entry.
type hostMatch struct {
	app      string // "" for none
	wildcard bool   // by the wildcard for the name's first label, not the name itself
	live     bool   // by a name added through the certs API, not one of the config's or <app>.<base_domain>
}

// hostApp is the only reader of the host index, with one rule: the name
// itself, then the wildcard for its first label ("*.example.com" for
// a.example.com); at each step the config's names and the apps'
// <app>.<base_domain> first, then the names added through the certs API.
// name is normalized (normalizeName). The resolver, HostApp, HostOwner
// and the check of an app created at run time all read the index through
// it. The caller holds reg.mu for reading, or reg.change (which every
// writer of the index holds too).
func (reg *registry) hostApp(name string) hostMatch {
	if name == "" {
		return hostMatch{}
	}
	if s := reg.hosts[name]; s != nil {
		return hostMatch{app: s.load().name}
	}
	if app := reg.liveHosts[name]; app != "" {
		return hostMatch{app: app, live: true}
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		wild := "*" + name[i:]
		if s := reg.hosts[wild]; s != nil {
			return hostMatch{app: s.load().name, wildcard: true}
		}
		if app := reg.liveHosts[wild]; app != "" {
			return hostMatch{app: app, wildcard: true, live: true}
		}
	}
	return hostMatch{}
}

// normalizeName returns a host name in lower case without a final dot.
func normalizeName(name string) string {
	name = strings.TrimSuffix(name, ".")
	for i := 0; i < len(name); i++ {
		if c := name[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(name)
		}
	}
	return name
}

// requestHost returns the request's host name, lower case, without port.
func requestHost(r *http.Request) string {
	host := r.Host
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	host = strings.TrimPrefix(host, "[")
	host = strings.TrimSuffix(host, "]")
	return normalizeName(host)
}

// AddrOf returns the IP address of a connection's address, unmapped
// (an IPv4 client of a dual-stack socket gives its IPv4 address).
func AddrOf(addr net.Addr) netip.Addr {
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case nil:
		return netip.Addr{}
	}
	ap, _ := netip.ParseAddrPort(addr.String())
	return ap.Addr().Unmap()
}

// portOf returns the port of a local address, or 0.
func portOf(addr net.Addr) int {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.Port
	case *net.UDPAddr:
		return a.Port
	case nil:
		return 0
	}
	if ap, err := netip.ParseAddrPort(addr.String()); err == nil {
		return int(ap.Port())
	}
	return 0
}
