package routing

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
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

	// The edge's name in the Via header of requests to machines and of
	// responses to clients ("1.1 <via>", "2 <via>"), as Fly.io's proxy
	// writes "fly.io". A token: letters, digits and -._~ only.
	// Default: flyedge
	Via string `json:"via,omitempty"`

	// Regions added to the built-in catalog of Fly.io regions, or
	// replacing entries of it, keyed by region code.
	Regions map[string]Region `json:"regions,omitempty"`

	// The apps served by this edge, keyed by app name.
	Apps map[string]*Application `json:"apps,omitempty"`

	catalog map[string]Region
	edge    Region
	reg     atomic.Pointer[registry]
	live    liveIndex
	health  *healthChecker
	metrics *metrics
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
	if a.Via == "" {
		a.Via = "flyedge"
	}
	if !viaRE.MatchString(a.Via) {
		return fmt.Errorf("via: %q is not a token (letters, digits and -._~)", a.Via)
	}
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
	a.metrics = newMetrics(ctx.GetMetricsRegistry())
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
	metrics   *routeMetrics
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
			e.routes[p.Port] = newRoute(name, name+"."+a.BaseDomain, a.Via, p, se, cfg.Services)
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

// AppRoute returns the route of app's service on edge port: the target
// of a fly-replay that names the app, not a connection's resolution.
func (a *App) AppRoute(app string, port int) (*Route, error) {
	slot := a.reg.Load().apps[app]
	if slot == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownApp, app)
	}
	return slot.load().route(port)
}

// SameOrg tells whether app from may send requests to app to with
// fly-replay: the same app, or two apps of one organization.
func (a *App) SameOrg(from, to string) bool {
	if from == to {
		return true
	}
	reg := a.reg.Load()
	f, t := reg.apps[from], reg.apps[to]
	if f == nil || t == nil {
		return false
	}
	org := f.load().config.Org
	return org != "" && org == t.load().config.Org
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
	se := &serviceEntry{app: app, config: s, metrics: newRouteMetrics(a.metrics, app, s)}
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
