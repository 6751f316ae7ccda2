package routing

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(new(App))
}

// App is the `fly` Caddy app: the edge's region, the region catalog, and
// the registry of apps, their services and machines that every flyedge
// module routes with. Lookups by host name, machine ID and region are map
// lookups: their cost does not grow with the number of apps.
//
// Other modules reach it with FromContext.
type App struct {
	// Region code of this edge (e.g. "iad"); must be in the catalog.
	// Default: iad
	Region string `json:"region,omitempty"`

	// Every app answers to <name>.<base_domain>.
	// Default: localhost
	BaseDomain string `json:"base_domain,omitempty"`

	// Regions added to the built-in catalog of Fly.io regions, or
	// replacing entries of it, keyed by region code.
	Regions map[string]Region `json:"regions,omitempty"`

	// The apps served by this edge, keyed by app name.
	Apps map[string]*Application `json:"apps,omitempty"`

	catalog map[string]Region
	edge    Region
	reg     atomic.Pointer[registry]
	book    atomic.Pointer[AddressBook]
	health  *healthChecker
	logger  *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "fly",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision builds the catalog and the registry.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	if a.Region == "" {
		a.Region = "iad"
	}
	if a.BaseDomain == "" {
		a.BaseDomain = "localhost"
	}
	a.BaseDomain = strings.ToLower(strings.TrimSuffix(a.BaseDomain, "."))
	if !hostnameRE.MatchString(a.BaseDomain) {
		return fmt.Errorf("base_domain: %q is not a valid host name", a.BaseDomain)
	}
	a.catalog = maps.Clone(builtinRegions)
	for code, r := range a.Regions {
		if err := r.validate(code); err != nil {
			return err
		}
		a.catalog[code] = r
	}
	edge, ok := a.catalog[a.Region]
	if !ok {
		return fmt.Errorf("region: %q is not in the region catalog", a.Region)
	}
	a.edge = edge
	a.health = newHealthChecker(a.logger.Named("health"))
	reg, err := a.build(a.Apps)
	if err != nil {
		return err
	}
	a.reg.Store(reg)
	return nil
}

// Start starts the active health checks.
func (a *App) Start() error {
	a.health.start(a.reg.Load())
	return nil
}

// Stop stops the active health checks.
func (a *App) Stop() error {
	a.health.stop()
	return nil
}

// Cleanup releases the health state this config held.
func (a *App) Cleanup() error {
	if reg := a.reg.Load(); reg != nil {
		for _, slot := range reg.apps {
			slot.load().health.release()
		}
	}
	return nil
}

// FromContext returns the fly app of the config being provisioned,
// loading it if need be.
func FromContext(ctx caddy.Context) (*App, error) {
	app, err := ctx.App("fly")
	if err != nil {
		return nil, fmt.Errorf("loading the fly app: %w", err)
	}
	return app.(*App), nil
}

// EdgeRegion returns the region code of this edge.
func (a *App) EdgeRegion() string { return a.Region }

// ErrNoApp means that no app answers to the host name of a request or
// connection.
var ErrNoApp = errors.New("no app answers to this host name")

// ErrNoService means that the app has no service on the edge port.
var ErrNoService = errors.New("the app has no service on this port")

// Route looks up where a connection for host on edge port goes. host
// must be lower case and without port.
func (a *App) Route(host string, port int) (*Route, error) {
	reg := a.reg.Load()
	e := reg.lookupHost(host)
	if e == nil {
		return nil, fmt.Errorf("%w: %q", ErrNoApp, host)
	}
	return e.route(port)
}

func (e *appEntry) route(port int) (*Route, error) {
	rt := e.routes[port]
	if rt == nil {
		return nil, fmt.Errorf("%w: app %s, port %d", ErrNoService, e.name, port)
	}
	return rt, nil
}

// RouteOfApp returns the route of app's service on edge port.
func (a *App) RouteOfApp(app string, port int) (*Route, error) {
	slot := a.reg.Load().apps[app]
	if slot == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownApp, app)
	}
	return slot.load().route(port)
}

// AddressBook tells which app a connection is for from the address it
// arrived on: the app that holds a dedicated address, or, on a shared
// address, the app that holds it and answers to the server name (TLS SNI
// or HTTP Host). The ipalloc package provides it.
type AddressBook interface {
	// AppFor returns the app for a connection to local with server name
	// name (lower case, no trailing dot, "" when the client sent none);
	// false means that no app gets the connection.
	AppFor(local netip.Addr, name string) (app string, ok bool)
}

// SetAddressBook makes the edge route by destination address: from now
// on a connection reaches an app only if the book says so (default
// deny), whatever its host name. nil switches back to host-name routing.
func (a *App) SetAddressBook(b AddressBook) {
	if b == nil {
		a.book.Store(nil)
		return
	}
	a.book.Store(&b)
}

// ErrDenied means that the address book gives the connection to no app.
var ErrDenied = errors.New("no app is reachable at this address")

// routeFor finds the route of a connection that arrived on local, with
// the server name the client sent ("" for none). With an address book
// the address decides; without one the name does, or, for a connection
// without a name, the port when one app alone has a service on it.
func (a *App) routeFor(local net.Addr, name string) (*Route, error) {
	port := portOf(local)
	if b := a.book.Load(); b != nil {
		addr := AddrOf(local)
		app, ok := (*b).AppFor(addr, name)
		if !ok {
			if name == "" {
				return nil, fmt.Errorf("%w: %s", ErrDenied, addr)
			}
			return nil, fmt.Errorf("%w: %s for %q", ErrDenied, addr, name)
		}
		return a.RouteOfApp(app, port)
	}
	if name != "" {
		return a.Route(name, port)
	}
	return a.routeByPort(port)
}

// AddrOf returns the IP address of a connection's address, unmapped
// (an IPv4 client of a dual-stack socket gives its IPv4 address).
func AddrOf(addr net.Addr) netip.Addr {
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case nil:
		return netip.Addr{}
	}
	ap, _ := netip.ParseAddrPort(addr.String())
	return ap.Addr().Unmap()
}

// routeVarKey is the request variable that caches the route of a request.
const routeVarKey = "fly.route"

// AppVarKey is the request variable (placeholder {http.vars.fly.app})
// that holds the name of the app a request was routed to.
const AppVarKey = "fly.app"

// RouteForRequest returns the route of an HTTP request: the app (by the
// address the connection arrived on when there is an address book, else
// by the Host it answers to), and the app's service on the edge port the
// request arrived on. The answer is cached in the request's variables, so every
// flyedge handler of one request sees the same route.
func (a *App) RouteForRequest(r *http.Request) (*Route, error) {
	if rt, ok := caddyhttp.GetVar(r.Context(), routeVarKey).(*Route); ok {
		return rt, nil
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	rt, err := a.routeFor(local, requestHost(r))
	if err != nil {
		return nil, err
	}
	caddyhttp.SetVar(r.Context(), routeVarKey, rt)
	caddyhttp.SetVar(r.Context(), AppVarKey, rt.App)
	return rt, nil
}

// RouteOf returns the route RouteForRequest cached for r, or nil.
func RouteOf(r *http.Request) *Route {
	rt, _ := caddyhttp.GetVar(r.Context(), routeVarKey).(*Route)
	return rt
}

// requestHost returns the request's host name, lower case, without port.
func requestHost(r *http.Request) string {
	host := r.Host
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	host = strings.TrimSuffix(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), ".")
	for i := 0; i < len(host); i++ {
		if c := host[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(host)
		}
	}
	return host
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

// registry holds the apps and their indexes. The maps are built once per
// config; an app's entry (its services, routes and machines) sits behind
// its own slot, so registering a machine live replaces one app's entry
// and leaves every other lookup untouched.
type registry struct {
	apps  map[string]*appSlot
	hosts map[string]*appSlot
	ports map[int][]*appSlot // the apps with a service on an edge port

	mu       sync.Mutex        // serializes SetMachines
	machines map[string]string // machine ID -> app, guarded by mu
}

// appSlot holds the current entry of one app.
type appSlot struct{ cur atomic.Pointer[appEntry] }

func (s *appSlot) load() *appEntry { return s.cur.Load() }

type appEntry struct {
	name     string
	config   *Application
	live     []*Machine // machines registered through SetMachines
	routes   map[int]*Route
	services []*serviceEntry
	health   *healthRefs
}

// serviceEntry holds the machines of one service, shared by the routes
// of its ports.
type serviceEntry struct {
	app       string
	config    *Service
	machines  []*machine // nearest first
	byID      map[string]int
	byDial    map[string]int
	tiers     [][]int            // machine indexes of equal distance, nearest first
	groups    map[string][][]int // tiers of the machines in a region, country or continent
	softLimit int
}

// HostOwner returns the app whose config has exactly the host name host
// (its <app>.<base_domain>, or an entry of its hostnames, "*.x" entries
// included), or "".
func (a *App) HostOwner(host string) string {
	if s := a.reg.Load().hosts[host]; s != nil {
		return s.load().name
	}
	return ""
}

// lookupHost finds the app answering to host: an exact name first, then
// a wildcard for its first label.
func (reg *registry) lookupHost(host string) *appEntry {
	if s := reg.hosts[host]; s != nil {
		return s.load()
	}
	if i := strings.IndexByte(host, '.'); i > 0 {
		if s := reg.hosts["*"+host[i:]]; s != nil {
			return s.load()
		}
	}
	return nil
}

// build indexes apps into a registry.
func (a *App) build(apps map[string]*Application) (*registry, error) {
	reg := &registry{
		apps:     make(map[string]*appSlot, len(apps)),
		hosts:    make(map[string]*appSlot, len(apps)),
		machines: make(map[string]string),
		ports:    make(map[int][]*appSlot),
	}
	for name, cfg := range apps {
		if cfg == nil {
			cfg = new(Application)
		}
		if err := cfg.validate(name, a.catalog); err != nil {
			return nil, err
		}
		slot := new(appSlot)
		for _, h := range append([]string{name + "." + a.BaseDomain}, cfg.Hostnames...) {
			if other := reg.hosts[h]; other != nil {
				return nil, fmt.Errorf("apps.%s.hostnames: %q is already a host name of app %s", name, h, other.load().name)
			}
			reg.hosts[h] = slot
		}
		for _, m := range cfg.Machines {
			if other, ok := reg.machines[m.ID]; ok {
				return nil, fmt.Errorf("apps.%s.machines: id %s is already used by a machine of app %s", name, m.ID, other)
			}
			reg.machines[m.ID] = name
		}
		for _, s := range cfg.Services {
			for _, p := range s.Ports {
				reg.ports[p.Port] = append(reg.ports[p.Port], slot)
			}
		}
		slot.cur.Store(a.newAppEntry(name, cfg, nil))
		reg.apps[name] = slot
	}
	return reg, nil
}

// newAppEntry builds the services and routes of an app from its config
// and its live machines.
func (a *App) newAppEntry(name string, cfg *Application, live []*Machine) *appEntry {
	e := &appEntry{name: name, config: cfg, live: live, routes: make(map[int]*Route), health: new(healthRefs)}
	machines := cfg.Machines
	if len(live) > 0 {
		machines = append(slices.Clip(machines), live...)
	}
	for _, s := range cfg.Services {
		se := a.newServiceEntry(name, s, machines, e.health)
		e.services = append(e.services, se)
		for _, p := range s.Ports {
			e.routes[p.Port] = newRoute(name, name+"."+a.BaseDomain, p, se, cfg.Services)
		}
	}
	return e
}

// ErrUnknownApp means that the fly config has no app of that name.
var ErrUnknownApp = errors.New("unknown app")

// ErrMachineTaken means that another app already has a machine with
// that ID.
var ErrMachineTaken = errors.New("machine ID is taken")

// SetMachines replaces the machines of app that were registered at run
// time (the admin API's machines) with live; the machines of the config
// stay. Routes of the app see the new machines at once; nothing else is
// rebuilt. A machine ID the config or another app uses is refused.
func (a *App) SetMachines(app string, live []*Machine) error {
	reg := a.reg.Load()
	slot := reg.apps[app]
	if slot == nil {
		return fmt.Errorf("%w: %s", ErrUnknownApp, app)
	}
	reg.mu.Lock()
	defer reg.mu.Unlock()
	old := slot.load()
	mine := make(map[string]bool, len(live))
	for i, m := range live {
		if err := m.validate(fmt.Sprintf("machines[%d]", i), a.catalog); err != nil {
			return err
		}
		if mine[m.ID] {
			return fmt.Errorf("machines[%d].id: %s is listed twice", i, m.ID)
		}
		mine[m.ID] = true
		if err := reg.checkTaken(app, m.ID, old.live); err != nil {
			return err
		}
	}
	for _, m := range old.live {
		delete(reg.machines, m.ID)
	}
	for _, m := range live {
		reg.machines[m.ID] = app
	}
	e := a.newAppEntry(app, old.config, slices.Clone(live))
	slot.cur.Store(e)
	a.health.restart(e)
	old.health.release()
	return nil
}

// CheckMachine tells whether m could be registered as a machine of app
// (as SetMachines would take it): its fields are valid and its ID is not
// one of the config's or another app's.
func (a *App) CheckMachine(app string, m *Machine) error {
	if err := m.validate("machine", a.catalog); err != nil {
		return err
	}
	reg := a.reg.Load()
	slot := reg.apps[app]
	if slot == nil {
		return fmt.Errorf("%w: %s", ErrUnknownApp, app)
	}
	reg.mu.Lock()
	defer reg.mu.Unlock()
	return reg.checkTaken(app, m.ID, slot.load().live)
}

// checkTaken refuses a machine ID that the config or another app uses;
// live are app's run-time machines, whose IDs it may register again.
// The caller holds reg.mu.
func (reg *registry) checkTaken(app, id string, live []*Machine) error {
	other, ok := reg.machines[id]
	if !ok || other == app && slices.ContainsFunc(live, func(o *Machine) bool { return o.ID == id }) {
		return nil
	}
	return fmt.Errorf("%w: machine %s belongs to app %s", ErrMachineTaken, id, other)
}

// Machines returns the machines of app: those of the config, then the
// ones registered at run time.
func (a *App) Machines(app string) ([]*Machine, error) {
	slot := a.reg.Load().apps[app]
	if slot == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownApp, app)
	}
	e := slot.load()
	return append(slices.Clone(e.config.Machines), e.live...), nil
}

// LiveMachines returns the machines of app registered at run time.
func (a *App) LiveMachines(app string) []*Machine {
	if slot := a.reg.Load().apps[app]; slot != nil {
		return slot.load().live
	}
	return nil
}

// HasApp tells whether the config has an app of that name.
func (a *App) HasApp(app string) bool { return a.reg.Load().apps[app] != nil }

// AppNames returns the names of the apps, in no particular order.
func (a *App) AppNames() []string { return slices.Collect(maps.Keys(a.reg.Load().apps)) }

// AppConfig returns the config of app, or nil.
func (a *App) AppConfig(app string) *Application {
	if s := a.reg.Load().apps[app]; s != nil {
		return s.load().config
	}
	return nil
}

// machine is the runtime form of a Machine for one service.
type machine struct {
	id      string
	region  string
	dial    string
	km      float64
	stopped bool
	health  *machineHealth
	checks  []*checkResult // one per check of the service
}

// available tells whether the edge's own view allows traffic to m: it is
// started, has not failed its latest active health check, and no
// connection attempt failed within the fail duration.
func (m *machine) available() bool {
	if m.stopped {
		return false
	}
	for _, c := range m.checks {
		if !c.ok.Load() {
			return false
		}
	}
	if fu := m.health.failedUntil.Load(); fu != 0 && time.Now().UnixNano() < fu {
		return false
	}
	return true
}

func (a *App) newServiceEntry(app string, s *Service, machines []*Machine, refs *healthRefs) *serviceEntry {
	se := &serviceEntry{app: app, config: s}
	for _, m := range machines {
		mm := &machine{
			id:      m.ID,
			region:  m.Region,
			dial:    net.JoinHostPort(m.Address, strconv.Itoa(s.InternalPort)),
			km:      distanceKm(a.edge, a.catalog[m.Region]),
			stopped: m.State == "stopped",
		}
		mm.health = refs.state(mm.id, mm.dial)
		for _, c := range s.Checks {
			mm.checks = append(mm.checks, refs.check(mm.id, mm.dial, c))
		}
		se.machines = append(se.machines, mm)
	}
	se.index(a.catalog)
	return se
}
