package routing

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/mholt/caddy-l4/layer4"
	"github.com/mholt/caddy-l4/modules/l4tls"
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

// Resolve returns the route of a connection or request that arrived on
// local naming server name (the TLS server name or the HTTP host, any
// case, without port; "" for none), or the reason it reaches no app.
// Its cost does not grow with the number of apps, addresses or names.
func (a *App) Resolve(local net.Addr, name string) (*Route, error) {
	return a.resolve(AddrOf(local), portOf(local), normalizeName(name))
}

func (a *App) resolve(addr netip.Addr, port int, name string) (*Route, error) {
	reg := a.reg.Load()
	lv := &a.live
	lv.mu.RLock()
	if !lv.byAddress {
		lv.mu.RUnlock()
		return reg.resolvePort(a, port, name)
	}
	app := lv.dedicated[addr]
	if app == "" && lv.sharedAddrs[addr] {
		app = a.hostAppLocked(reg, name)
		if app != "" && !lv.shared[sharedKey{addr, app}] {
			app = ""
		}
	}
	lv.mu.RUnlock()
	if app == "" {
		if name == "" {
			return nil, fmt.Errorf("%w: %s", ErrDenied, addr)
		}
		return nil, fmt.Errorf("%w: %s for %q", ErrDenied, addr, name)
	}
	slot := reg.apps[app]
	if slot == nil {
		return nil, fmt.Errorf("%w: %s (app %s is not configured)", ErrDenied, addr, app)
	}
	return slot.load().route(port)
}

// resolvePort is the rule without address routing: the port decides when
// one app serves it, else the name among the apps that do.
func (reg *registry) resolvePort(a *App, port int, name string) (*Route, error) {
	slots := reg.ports[port]
	if len(slots) == 1 {
		return slots[0].load().route(port)
	}
	a.live.mu.RLock()
	app := a.hostAppLocked(reg, name)
	a.live.mu.RUnlock()
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
	lv := &a.live
	lv.mu.RLock()
	defer lv.mu.RUnlock()
	if lv.byAddress {
		return lv.dedicated[addr] == "" && lv.sharedAddrs[addr]
	}
	return len(a.reg.Load().ports[portOf(local)]) > 1
}

// HostApp returns the app that answers to host name name (any case): its
// <app>.<base_domain>, a host name of its config or one added through the
// certs API; an exact name first, then a wildcard for the first label.
// "" means none.
func (a *App) HostApp(name string) string {
	a.live.mu.RLock()
	defer a.live.mu.RUnlock()
	return a.hostAppLocked(a.reg.Load(), normalizeName(name))
}

// hostAppLocked is HostApp for a normalized name; the caller holds
// a.live.mu for reading.
func (a *App) hostAppLocked(reg *registry, name string) string {
	if name == "" {
		return ""
	}
	if s := reg.hosts[name]; s != nil {
		return s.load().name
	}
	if app := a.live.hosts[name]; app != "" {
		return app
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		wild := "*" + name[i:]
		if s := reg.hosts[wild]; s != nil {
			return s.load().name
		}
		return a.live.hosts[wild]
	}
	return ""
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

// liveIndex is what the edge learns at run time from the fly_ips store:
// which app holds which address, and the host names added through the
// certs API. It outlives config reloads only through the store, which
// pushes it into each new fly app.
type liveIndex struct {
	mu          sync.RWMutex
	byAddress   bool
	sharedAddrs map[netip.Addr]bool
	dedicated   map[netip.Addr]string
	shared      map[sharedKey]bool
	hosts       map[string]string
	apps        map[string]*LiveApp // as last pushed, by app
}

type sharedKey struct {
	addr netip.Addr
	app  string
}

// LiveApp is what the edge learned of one app at run time: the addresses
// it holds, the host names added for it, and the machines registered for
// it through the admin API.
type LiveApp struct {
	// Dedicated addresses (v6 and v4) of the app.
	Dedicated []netip.Addr
	// Shared addresses the app holds.
	Shared []netip.Addr
	// Host names added through the certs API ("*.x" for a wildcard).
	Hostnames []string
	// Machines registered at run time.
	Machines []*Machine
}

// RouteByAddress turns address routing on: from now on a connection
// reaches an app only through an address the app holds (see Resolve).
// shared are the edge's shared addresses.
func (a *App) RouteByAddress(shared []netip.Addr) {
	lv := &a.live
	lv.mu.Lock()
	defer lv.mu.Unlock()
	lv.byAddress = true
	lv.sharedAddrs = make(map[netip.Addr]bool, len(shared))
	for _, s := range shared {
		lv.sharedAddrs[s] = true
	}
}

// SetLive replaces what the edge knows of app at run time with l; the
// resolver and machine selection use it as soon as SetLive returns. An
// app that the config does not have keeps its addresses and names (they
// route nowhere) and its machines are ignored. A machine that cannot be
// taken (its ID is the config's or another app's, its region is unknown)
// is left out and named in the error; the rest are taken.
func (a *App) SetLive(app string, l *LiveApp) error {
	lv := &a.live
	lv.mu.Lock()
	if lv.dedicated == nil {
		lv.dedicated = make(map[netip.Addr]string)
		lv.shared = make(map[sharedKey]bool)
		lv.hosts = make(map[string]string)
		lv.apps = make(map[string]*LiveApp)
	}
	if old := lv.apps[app]; old != nil {
		for _, addr := range old.Dedicated {
			if lv.dedicated[addr] == app {
				delete(lv.dedicated, addr)
			}
		}
		for _, addr := range old.Shared {
			delete(lv.shared, sharedKey{addr, app})
		}
		for _, h := range old.Hostnames {
			if lv.hosts[h] == app {
				delete(lv.hosts, h)
			}
		}
	}
	if l == nil || len(l.Dedicated)+len(l.Shared)+len(l.Hostnames)+len(l.Machines) == 0 {
		delete(lv.apps, app)
		l = &LiveApp{}
	} else {
		lv.apps[app] = l
	}
	for _, addr := range l.Dedicated {
		lv.dedicated[addr] = app
	}
	for _, addr := range l.Shared {
		lv.shared[sharedKey{addr, app}] = true
	}
	for _, h := range l.Hostnames {
		lv.hosts[h] = app
	}
	lv.mu.Unlock()
	if !a.HasApp(app) {
		return nil
	}
	// a machine the config or another app claims now, or one this edge's
	// catalog does not know, is left out alone: the others still count
	var ms []*Machine
	var errs []error
	seen := make(map[string]bool, len(l.Machines))
	for _, m := range l.Machines {
		if err := a.CheckMachine(app, m); err != nil || seen[m.ID] {
			errs = append(errs, fmt.Errorf("machine %s left out: %w", m.ID, err))
			continue
		}
		seen[m.ID] = true
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(x, y *Machine) int { return strings.Compare(x.ID, y.ID) })
	if !slices.EqualFunc(ms, a.LiveMachines(app), func(x, y *Machine) bool { return *x == *y }) {
		errs = append(errs, a.SetMachines(app, ms))
	}
	return errors.Join(errs...)
}

// LiveApps returns the names of the apps SetLive holds something for.
func (a *App) LiveApps() []string {
	a.live.mu.RLock()
	defer a.live.mu.RUnlock()
	names := make([]string, 0, len(a.live.apps))
	for name := range a.live.apps {
		names = append(names, name)
	}
	return names
}

// routeVarKey is the request and connection variable that caches the
// route of a request or connection.
const routeVarKey = "fly.route"

// AppVarKey is the request variable ({http.vars.fly.app}) and the
// connection variable ({l4.vars.fly.app}) that holds the name of the app
// a request or connection was routed to.
const AppVarKey = "fly.app"

// RouteForRequest returns the route of an HTTP request: Resolve for the
// address the connection arrived on and the request's Host. The answer
// is cached in the request's variables, so every flyedge module of one
// request sees the same route.
func (a *App) RouteForRequest(r *http.Request) (*Route, error) {
	if rt, ok := caddyhttp.GetVar(r.Context(), routeVarKey).(*Route); ok {
		return rt, nil
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	rt, err := a.resolve(AddrOf(local), portOf(local), requestHost(r))
	if err != nil {
		return nil, err
	}
	caddyhttp.SetVar(r.Context(), routeVarKey, rt)
	caddyhttp.SetVar(r.Context(), AppVarKey, rt.App)
	return rt, nil
}

// SetRequestRoute makes rt the route of r for the modules that handle it
// from now on (a fly-replay to another app).
func SetRequestRoute(r *http.Request, rt *Route) {
	caddyhttp.SetVar(r.Context(), routeVarKey, rt)
	caddyhttp.SetVar(r.Context(), AppVarKey, rt.App)
}

// RouteOf returns the route RouteForRequest cached for r, or nil.
func RouteOf(r *http.Request) *Route {
	rt, _ := caddyhttp.GetVar(r.Context(), routeVarKey).(*Route)
	return rt
}

// RouteForConn returns the route of a layer 4 connection: the one a
// handler recorded with SetConnRoute (fly_tls and pg_tls, after the
// handshake), else Resolve for the address the connection arrived on
// and the TLS server name the edge terminated or a matcher read. The
// answer is cached in the connection's variables.
func (a *App) RouteForConn(cx *layer4.Connection) (*Route, error) {
	if rt, ok := cx.GetVar(routeVarKey).(*Route); ok {
		return rt, nil
	}
	rt, err := a.Resolve(cx.LocalAddr(), serverName(cx))
	if err != nil {
		return nil, err
	}
	SetConnRoute(cx, rt)
	return rt, nil
}

// SetConnRoute records the route a handler resolved for cx (for example
// during a TLS handshake, from the server name), so that later handlers
// use the same one.
func SetConnRoute(cx *layer4.Connection, rt *Route) {
	cx.SetVar(routeVarKey, rt)
	cx.SetVar(AppVarKey, rt.App)
}

// ServerNameVarKey is the connection variable with the TLS server name a
// matcher read from the ClientHello before any handler ran.
const ServerNameVarKey = "fly.server_name"

// serverName returns the server name of the last TLS handshake the edge
// terminated on cx, else the one a matcher read from the ClientHello,
// or "".
func serverName(cx *layer4.Connection) string {
	if chis := l4tls.GetClientHelloInfos(cx); len(chis) > 0 {
		return chis[len(chis)-1].ServerName
	}
	name, _ := cx.GetVar(ServerNameVarKey).(string)
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
