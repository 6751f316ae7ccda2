package routing

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"

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
// Other modules reach it with ctx.App("fly").
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
	if a.health != nil {
		a.health.release()
	}
	return nil
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
	rt := e.routes[port]
	if rt == nil {
		return nil, fmt.Errorf("%w: app %s, port %d", ErrNoService, e.name, port)
	}
	return rt, nil
}

// routeVarKey is the request variable that caches the route of a request.
const routeVarKey = "fly.route"

// AppVarKey is the request variable (placeholder {http.vars.fly.app})
// that holds the name of the app a request was routed to.
const AppVarKey = "fly.app"

// RouteForRequest returns the route of an HTTP request: the app that
// answers to its Host, and the app's service on the edge port the request
// arrived on. The answer is cached in the request's variables, so every
// flyedge handler of one request sees the same route.
func (a *App) RouteForRequest(r *http.Request) (*Route, error) {
	if rt, ok := caddyhttp.GetVar(r.Context(), routeVarKey).(*Route); ok {
		return rt, nil
	}
	rt, err := a.Route(requestHost(r), LocalPort(r))
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

// LocalPort returns the edge port an HTTP request arrived on, or 0.
func LocalPort(r *http.Request) int {
	addr, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return portOf(addr)
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

// registry is an immutable snapshot of the apps and their indexes.
type registry struct {
	apps     map[string]*appEntry
	hosts    map[string]*appEntry
	machines map[string]*appEntry
	ports    map[int][]*Route // every app's route on an edge port
}

type appEntry struct {
	name     string
	config   *Application
	routes   map[int]*Route
	services []*serviceEntry
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

// lookupHost finds the app answering to host: an exact name first, then
// a wildcard for its first label.
func (reg *registry) lookupHost(host string) *appEntry {
	if e := reg.hosts[host]; e != nil {
		return e
	}
	if i := strings.IndexByte(host, '.'); i > 0 {
		return reg.hosts["*"+host[i:]]
	}
	return nil
}

// build indexes apps into a registry.
func (a *App) build(apps map[string]*Application) (*registry, error) {
	reg := &registry{
		apps:     make(map[string]*appEntry, len(apps)),
		hosts:    make(map[string]*appEntry, len(apps)),
		machines: make(map[string]*appEntry),
		ports:    make(map[int][]*Route),
	}
	for name, cfg := range apps {
		if cfg == nil {
			cfg = new(Application)
		}
		if err := cfg.validate(name, a.catalog); err != nil {
			return nil, err
		}
		e := &appEntry{name: name, config: cfg, routes: make(map[int]*Route)}
		for _, h := range append([]string{name + "." + a.BaseDomain}, cfg.Hostnames...) {
			if other := reg.hosts[h]; other != nil {
				return nil, fmt.Errorf("apps.%s.hostnames: %q is already a host name of app %s", name, h, other.name)
			}
			reg.hosts[h] = e
		}
		for _, m := range cfg.Machines {
			if other := reg.machines[m.ID]; other != nil {
				return nil, fmt.Errorf("apps.%s.machines: id %s is already used by a machine of app %s", name, m.ID, other.name)
			}
			reg.machines[m.ID] = e
		}
		for _, s := range cfg.Services {
			se := a.newServiceEntry(name, s, cfg.Machines)
			e.services = append(e.services, se)
			for _, p := range s.Ports {
				rt := newRoute(name, name+"."+a.BaseDomain, p, se, cfg.Services)
				e.routes[p.Port] = rt
				reg.ports[p.Port] = append(reg.ports[p.Port], rt)
			}
		}
		reg.apps[name] = e
	}
	return reg, nil
}

// machine is the runtime form of a Machine for one service.
type machine struct {
	id      string
	region  string
	dial    string
	km      float64
	stopped bool
	health  *machineHealth
}

// available tells whether the edge's own view allows traffic to m: it is
// started, has not failed its latest active health check, and no
// connection attempt failed within the fail duration.
func (m *machine) available() bool {
	if m.stopped || !m.health.healthy.Load() {
		return false
	}
	if fu := m.health.failedUntil.Load(); fu != 0 && now().UnixNano() < fu {
		return false
	}
	return true
}

func (a *App) newServiceEntry(app string, s *Service, machines []*Machine) *serviceEntry {
	se := &serviceEntry{app: app, config: s}
	for _, m := range machines {
		mm := &machine{
			id:      m.ID,
			region:  m.Region,
			dial:    net.JoinHostPort(m.Address, strconv.Itoa(s.InternalPort)),
			km:      distanceKm(a.edge, a.catalog[m.Region]),
			stopped: m.State == "stopped",
		}
		mm.health = a.health.state(mm.id, mm.dial)
		se.machines = append(se.machines, mm)
	}
	se.index(a.catalog)
	return se
}
