package routing

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Where an app is defined: in Caddy's config, or created at run time
// through the admin API (and kept in the fly_ips store).
const (
	SourceConfig = "config"
	SourceAPI    = "api"
)

// registry holds the apps and every index the resolver and selection
// read: the config's apps, built once per config, and what the fly_ips
// store pushes at run time (apps created through the admin API, which
// app holds which address, host names added through the certs API,
// machines). Lookups hold mu for reading. A change builds the app's new
// entry first and holds mu for writing only to swap it in and update the
// indexes of that app, so it costs what one app costs, whatever the
// number of apps.
type registry struct {
	change sync.Mutex // serializes changes; a changer may read the maps without mu

	mu       sync.RWMutex
	apps     map[string]*appSlot
	hosts    map[string]*appSlot         // <app>.<base_domain> and config host names
	ports    map[int]map[string]*appSlot // the apps with a service on an edge port
	machines map[string]string           // machine ID -> app
	// the config's machines: machine ID -> app; set by build, never changed
	configMachines map[string]string

	// learned from the store
	byAddress   bool
	sharedAddrs map[netip.Addr]bool
	dedicated   map[netip.Addr]string
	shared      map[sharedKey]bool
	liveHosts   map[string]string   // certs-API host names -> app
	live        map[string]*LiveApp // as last pushed, by app
}

type sharedKey struct {
	addr netip.Addr
	app  string
}

func newRegistry(n int) *registry {
	return &registry{
		apps:      make(map[string]*appSlot, n),
		hosts:     make(map[string]*appSlot, n),
		ports:     make(map[int]map[string]*appSlot),
		machines:  make(map[string]string),
		dedicated: make(map[netip.Addr]string),
		shared:    make(map[sharedKey]bool),
		liveHosts: make(map[string]string),
		live:      make(map[string]*LiveApp),
	}
}

// appSlot holds the current entry of one app; routes keep the entry they
// were built from, so replacing it leaves connections in flight alone.
type appSlot struct{ cur atomic.Pointer[appEntry] }

func (s *appSlot) load() *appEntry { return s.cur.Load() }

type appEntry struct {
	name     string
	source   string
	config   *Application
	live     []*Machine     // machines registered through SetMachines
	routes   map[int]*Route // by edge port: tcp services
	udp      map[int]*Route // by edge port: udp services
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

	queue        slotQueue     // requests waiting for a machine below the hard limit
	queueTimeout time.Duration // how long they wait
}

// build indexes the config's apps into a registry.
func (a *App) build(apps map[string]*Application) (*registry, error) {
	reg := newRegistry(len(apps))
	for name, cfg := range apps {
		if cfg == nil {
			cfg = new(Application)
		}
		if err := cfg.validate(name, a.catalog); err != nil {
			return nil, err
		}
		if err := cfg.checkInput(name); err != nil {
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
		reg.addPorts(name, cfg, slot)
		slot.cur.Store(a.newAppEntry(name, SourceConfig, cfg, nil))
		reg.apps[name] = slot
	}
	reg.configMachines = maps.Clone(reg.machines)
	return reg, nil
}

func (reg *registry) addPorts(name string, cfg *Application, slot *appSlot) {
	for _, s := range cfg.Services {
		if s.Protocol == "udp" {
			continue // reached by dedicated address only
		}
		for _, p := range s.Ports {
			m := reg.ports[p.Port]
			if m == nil {
				m = make(map[string]*appSlot)
				reg.ports[p.Port] = m
			}
			m[name] = slot
		}
	}
}

func (reg *registry) removePorts(name string, cfg *Application) {
	for _, s := range cfg.Services {
		if s.Protocol == "udp" {
			continue
		}
		for _, p := range s.Ports {
			delete(reg.ports[p.Port], name)
			if len(reg.ports[p.Port]) == 0 {
				delete(reg.ports, p.Port)
			}
		}
	}
}

// newAppEntry builds the services and routes of an app from its config
// and its live machines.
func (a *App) newAppEntry(name, source string, cfg *Application, live []*Machine) *appEntry {
	e := &appEntry{name: name, source: source, config: cfg, live: live, routes: make(map[int]*Route), health: new(healthRefs)}
	machines := cfg.Machines
	if len(live) > 0 {
		machines = append(slices.Clip(machines), live...)
	}
	life := lifetimes.of(name)
	for _, s := range cfg.Services {
		se := a.newServiceEntry(name, s, machines, e.health)
		e.services = append(e.services, se)
		for _, p := range s.Ports {
			rt := newRoute(name, name+"."+a.BaseDomain, a.Via, p, se, cfg.Services)
			rt.life = life
			if s.Protocol == "udp" {
				if e.udp == nil {
					e.udp = make(map[int]*Route)
				}
				e.udp[p.Port] = rt
				continue
			}
			e.routes[p.Port] = rt
		}
	}
	return e
}

// ErrUnknownApp means that the edge has no app of that name.
var ErrUnknownApp = errors.New("unknown app")

// ErrMachineTaken means that another app already has a machine with
// that ID.
var ErrMachineTaken = errors.New("machine ID is taken")

// ErrAppDefined means that an app of that name is defined in the config,
// so the admin API can neither create nor change nor destroy it.
var ErrAppDefined = errors.New("the app is defined in the config")

// ErrHostTaken means that another app answers to the app's host name.
var ErrHostTaken = errors.New("the host name is taken")

// ErrPortNotServed means that a service asks for an edge port the edge
// does not listen on.
var ErrPortNotServed = errors.New("not one of the edge's ports")

// ServePorts tells the registry which edge ports the edge listens on
// for TCP and for UDP (serves; list names them in messages): CheckApp
// refuses an app with a service on any other port. Without it, every
// port is taken.
func (a *App) ServePorts(serves, servesUDP func(port int) bool, list string) {
	a.reg.change.Lock()
	defer a.reg.change.Unlock()
	a.serves, a.servesUDP, a.servesList = serves, servesUDP, list
}

// CheckPorts returns an error naming the first service port of cfg (app
// name) that the edge does not listen on, or nil.
func (a *App) CheckPorts(name string, cfg *Application) error {
	if a.serves == nil {
		return nil
	}
	for si, s := range cfg.Services {
		serves, proto := a.serves, ""
		if s.Protocol == "udp" {
			serves, proto = a.servesUDP, "udp "
		}
		for pi, p := range s.Ports {
			if !serves(p.Port) {
				return fmt.Errorf("apps.%s.services[%d].ports[%d].port: %s%d is %w (%s)", name, si, pi, proto, p.Port, ErrPortNotServed, a.servesList)
			}
		}
	}
	return nil
}

// SetMachines replaces the machines of app that were registered at run
// time (the admin API's machines) with live; the machines of the config
// stay. Routes of the app see the new machines at once; nothing else is
// rebuilt. A machine ID the config or another app uses is refused.
func (a *App) SetMachines(app string, live []*Machine) error {
	reg := a.reg
	reg.change.Lock()
	defer reg.change.Unlock()
	return a.setMachines(app, live)
}

// setMachines is SetMachines; the caller holds reg.change.
func (a *App) setMachines(app string, live []*Machine) error {
	reg := a.reg
	slot := reg.apps[app]
	if slot == nil {
		return fmt.Errorf("%w: %s", ErrUnknownApp, app)
	}
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
	e := a.newAppEntry(app, old.source, old.config, slices.Clone(live))
	reg.mu.Lock()
	for _, m := range old.live {
		delete(reg.machines, m.ID)
	}
	for _, m := range live {
		reg.machines[m.ID] = app
	}
	slot.cur.Store(e)
	reg.mu.Unlock()
	a.health.restart(e)
	old.health.release()
	return nil
}

// CheckMachine tells whether SetLive would take m as a machine of app
// as far as the config decides: its fields are valid (its region in this
// edge's catalog) and its ID is not one of the config's machines. The
// caller (the fly_ips store, inside the change) checks that no other app
// registered the ID at run time, and that app exists.
func (a *App) CheckMachine(app string, m *Machine) error {
	if err := m.validate("machine", a.catalog); err != nil {
		return err
	}
	switch owner, ok := a.reg.configMachines[m.ID]; {
	case !ok:
		return nil
	case owner == app:
		return fmt.Errorf("%w: machine %s of app %s is defined in the config; change it there", ErrMachineTaken, m.ID, app)
	default:
		return fmt.Errorf("%w: machine %s belongs to app %s in the config", ErrMachineTaken, m.ID, owner)
	}
}

// checkTaken refuses a machine ID that the config or another app uses;
// live are app's run-time machines, whose IDs it may register again.
// The caller holds reg.mu or reg.change.
func (reg *registry) checkTaken(app, id string, live []*Machine) error {
	other, ok := reg.machines[id]
	if !ok || other == app && slices.ContainsFunc(live, func(o *Machine) bool { return o.ID == id }) {
		return nil
	}
	return fmt.Errorf("%w: machine %s belongs to app %s", ErrMachineTaken, id, other)
}

// entry returns the current entry of app, or nil.
func (a *App) entry(app string) *appEntry {
	a.reg.mu.RLock()
	slot := a.reg.apps[app]
	a.reg.mu.RUnlock()
	if slot == nil {
		return nil
	}
	return slot.load()
}

// Machines returns the machines of app: those of the config, then the
// ones registered at run time.
func (a *App) Machines(app string) ([]*Machine, error) {
	e := a.entry(app)
	if e == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownApp, app)
	}
	return append(slices.Clone(e.config.Machines), e.live...), nil
}

// LiveMachines returns the machines of app registered at run time.
func (a *App) LiveMachines(app string) []*Machine {
	if e := a.entry(app); e != nil {
		return e.live
	}
	return nil
}

// AppRoute returns the route of app's service on edge port: the target
// of a fly-replay that names the app, not a connection's resolution.
func (a *App) AppRoute(app string, port int) (*Route, error) {
	e := a.entry(app)
	if e == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownApp, app)
	}
	return e.route(port)
}

// SameOrg tells whether app from may send requests to app to with
// fly-replay: the same app, or two apps of one organization.
func (a *App) SameOrg(from, to string) bool {
	if from == to {
		return true
	}
	f, t := a.entry(from), a.entry(to)
	if f == nil || t == nil {
		return false
	}
	return f.config.Org != "" && f.config.Org == t.config.Org
}

// HasApp tells whether the edge has an app of that name, from the config
// or the admin API.
func (a *App) HasApp(app string) bool { return a.entry(app) != nil }

// AppNames returns the names of the apps, in no particular order.
func (a *App) AppNames() []string {
	a.reg.mu.RLock()
	defer a.reg.mu.RUnlock()
	names := make([]string, 0, len(a.reg.apps))
	for name := range a.reg.apps {
		names = append(names, name)
	}
	return names
}

// AppConfig returns the config of app, or nil. It is shared: the caller
// must not change it.
func (a *App) AppConfig(app string) *Application {
	if e := a.entry(app); e != nil {
		return e.config
	}
	return nil
}

// AppSource returns where app is defined (SourceConfig or SourceAPI), or
// "" when the edge has no such app.
func (a *App) AppSource(app string) string {
	if e := a.entry(app); e != nil {
		return e.source
	}
	return ""
}

// HostOwner returns the app whose config or name gives it exactly the
// host name host (its <app>.<base_domain>, or an entry of its hostnames,
// "*.x" entries included), or "".
func (a *App) HostOwner(host string) string {
	a.reg.mu.RLock()
	s := a.reg.hosts[host]
	a.reg.mu.RUnlock()
	if s != nil {
		return s.load().name
	}
	return ""
}

// ParseApp reads an app created through the admin API: the config's JSON
// shape without machines (they are registered under
// /fly/apps/{app}/machines) and without host names (added through the
// certs API, which checks who may claim them). The body is decoded with
// DecodeStrict: one object, exact keys, each once, no nulls, nothing
// after it. Errors name the field. The result is checked and parsed, and
// must not be changed afterwards: the edge routes with it as it is.
func ParseApp(name string, data []byte) (*Application, error) {
	return parseApp(name, data, true)
}

// ParseStoredApp is ParseApp for an app as the store keeps it: the JSON
// of a ParseApp result. It skips DecodeStrict's pass over the tokens,
// which that JSON passes by construction and which would make reading a
// store of 100,000 apps seconds slower (it takes about four times as
// long as the decoding); the fields are checked the same.
func ParseStoredApp(name string, data []byte) (*Application, error) {
	return parseApp(name, data, false)
}

func parseApp(name string, data []byte, strict bool) (*Application, error) {
	if !appNameRE.MatchString(name) {
		return nil, fmt.Errorf("name: %q must be a DNS label of at most 63 characters (lower-case letters, digits and '-')", name)
	}
	cfg := new(Application)
	if strict {
		if err := DecodeStrict("apps."+name, data, cfg); err != nil {
			return nil, err
		}
	} else {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(cfg); err != nil {
			return nil, fmt.Errorf("apps.%s: %w", name, err)
		}
	}
	if len(cfg.Machines) > 0 {
		return nil, fmt.Errorf("apps.%s.machines: register machines under /fly/apps/%s/machines, not in the app", name, name)
	}
	if len(cfg.Hostnames) > 0 {
		return nil, fmt.Errorf("apps.%s.hostnames: add host names through /fly/apps/%s/certs, not in the app", name, name)
	}
	if err := cfg.validate(name, nil); err != nil {
		return nil, err
	}
	if strict {
		if err := cfg.checkInput(name); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

// CheckApp tells whether cfg (from ParseApp) could be created or set as
// app through the admin API on this edge: its services use the edge's
// ports only, the config has no app of that name, and no other app
// answers to <app>.<base_domain>.
func (a *App) CheckApp(app string, cfg *Application) error {
	reg := a.reg
	reg.change.Lock() // a.serves
	defer reg.change.Unlock()
	if err := a.CheckPorts(app, cfg); err != nil {
		return err
	}
	return a.checkAppLocked(app)
}

// checkAppLocked is CheckApp; the caller holds reg.mu or reg.change.
func (a *App) checkAppLocked(app string) error {
	reg := a.reg
	if slot := reg.apps[app]; slot != nil && slot.load().source == SourceConfig {
		return fmt.Errorf("%w: app %s; change or remove it in the config", ErrAppDefined, app)
	}
	host := app + "." + a.BaseDomain
	if s := reg.hosts[host]; s != nil && s.load().name != app {
		return fmt.Errorf("%w: app %s answers to %s already", ErrHostTaken, s.load().name, host)
	}
	if other := reg.liveHosts[host]; other != "" && other != app {
		return fmt.Errorf("%w: app %s added %s through the certs API", ErrHostTaken, other, host)
	}
	return nil
}

// LiveApp is what the edge learned of one app at run time: its
// definition when it was created through the admin API, the addresses
// it holds, the host names added for it, and the machines registered
// for it.
type LiveApp struct {
	// The app as created through the admin API (from ParseApp; it is not
	// changed), or nil.
	Config *Application
	// Dedicated addresses (v6 and v4) of the app.
	Dedicated []netip.Addr
	// Shared addresses the app holds.
	Shared []netip.Addr
	// Host names added through the certs API ("*.x" for a wildcard).
	Hostnames []string
	// Machines registered at run time.
	Machines []*Machine
}

func (l *LiveApp) empty() bool {
	return l.Config == nil && len(l.Dedicated)+len(l.Shared)+len(l.Hostnames)+len(l.Machines) == 0
}

// RouteByAddress turns address routing on: from now on a connection
// reaches an app only through an address the app holds (see Resolve).
// shared are the edge's shared addresses.
func (a *App) RouteByAddress(shared []netip.Addr) {
	reg := a.reg
	reg.mu.Lock()
	defer reg.mu.Unlock()
	reg.byAddress = true
	reg.sharedAddrs = make(map[netip.Addr]bool, len(shared))
	for _, s := range shared {
		reg.sharedAddrs[s] = true
	}
}

// SetLive replaces what the edge knows of app at run time with l; the
// resolver and machine selection use it as soon as SetLive returns.
//
// An app l defines (created through the admin API) is added or replaced;
// one it no longer defines is removed, and the connections to it are
// closed. The config's apps are never replaced: l's definition of one is
// refused with ErrAppDefined, the rest of l still counts. An app that
// neither the config nor l defines keeps its addresses and names (they
// route nowhere) and its machines are ignored. A machine that cannot be
// taken (its ID is the config's or another app's, its region is unknown)
// is left out and named in the error; the rest are taken.
func (a *App) SetLive(app string, l *LiveApp) error {
	reg := a.reg
	reg.change.Lock()
	defer reg.change.Unlock()
	if l == nil || l.empty() {
		l = &LiveApp{}
	}
	var errs []error

	// the app's definition, built before anything is swapped in
	slot := reg.apps[app]
	var old *appEntry
	if slot != nil {
		old = slot.load()
	}
	var next *appEntry
	switch {
	case l.Config != nil && old != nil && old.source == SourceConfig:
		errs = append(errs, fmt.Errorf("%w: app %s was also created through the admin API; the config's is served", ErrAppDefined, app))
	case l.Config != nil && (old == nil || old.config != l.Config):
		if err := a.checkAppLocked(app); err != nil {
			errs = append(errs, err)
			break
		}
		var live []*Machine
		if old != nil {
			live = old.live
		}
		next = a.newAppEntry(app, SourceAPI, l.Config, live)
	}
	remove := l.Config == nil && old != nil && old.source == SourceAPI

	reg.mu.Lock()
	if prev := reg.live[app]; prev != nil {
		for _, addr := range prev.Dedicated {
			if reg.dedicated[addr] == app {
				delete(reg.dedicated, addr)
			}
		}
		for _, addr := range prev.Shared {
			delete(reg.shared, sharedKey{addr, app})
		}
		for _, h := range prev.Hostnames {
			if reg.liveHosts[h] == app {
				delete(reg.liveHosts, h)
			}
		}
	}
	if l.empty() {
		delete(reg.live, app)
	} else {
		reg.live[app] = l
	}
	for _, addr := range l.Dedicated {
		reg.dedicated[addr] = app
	}
	for _, addr := range l.Shared {
		reg.shared[sharedKey{addr, app}] = true
	}
	for _, h := range l.Hostnames {
		reg.liveHosts[h] = app
	}
	switch {
	case next != nil && old == nil:
		slot = new(appSlot)
		slot.cur.Store(next)
		reg.apps[app] = slot
		reg.hosts[app+"."+a.BaseDomain] = slot
		reg.addPorts(app, next.config, slot)
	case next != nil:
		reg.removePorts(app, old.config)
		reg.addPorts(app, next.config, slot)
		slot.cur.Store(next)
	case remove:
		delete(reg.apps, app)
		if reg.hosts[app+"."+a.BaseDomain] == slot {
			delete(reg.hosts, app+"."+a.BaseDomain)
		}
		reg.removePorts(app, old.config)
		for _, m := range old.live {
			delete(reg.machines, m.ID)
		}
	}
	reg.mu.Unlock()

	switch {
	case remove:
		a.health.forget(app)
		old.health.release()
		lifetimes.end(app) // closes the app's connections
		return errors.Join(errs...)
	case next != nil:
		a.health.restart(next)
		if old != nil {
			old.health.release()
		}
	}
	if reg.apps[app] == nil {
		return errors.Join(errs...)
	}

	// a machine the config or another app claims now, or one this edge's
	// catalog does not know, is left out alone: the others still count
	var ms []*Machine
	seen := make(map[string]bool, len(l.Machines))
	for _, m := range l.Machines {
		err := m.validate("machine", a.catalog)
		if err == nil {
			err = reg.checkTaken(app, m.ID, reg.apps[app].load().live)
		}
		if err != nil || seen[m.ID] {
			errs = append(errs, fmt.Errorf("machine %s left out: %w", m.ID, err))
			continue
		}
		seen[m.ID] = true
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(x, y *Machine) int { return strings.Compare(x.ID, y.ID) })
	if !slices.EqualFunc(ms, reg.apps[app].load().live, func(x, y *Machine) bool { return *x == *y }) {
		errs = append(errs, a.setMachines(app, ms))
	}
	return errors.Join(errs...)
}

// LiveApps returns the names of the apps SetLive holds something for.
func (a *App) LiveApps() []string {
	a.reg.mu.RLock()
	defer a.reg.mu.RUnlock()
	names := make([]string, 0, len(a.reg.live))
	for name := range a.reg.live {
		names = append(names, name)
	}
	return names
}

// lifetimes has a context per app name that ends when the app is
// destroyed through the admin API: every connection to the app watches
// it. It is per process, not per config, so a config reload between the
// app's connections and its destruction changes nothing.
var lifetimes = &appLifetimes{m: make(map[string]*appLife)}

type appLifetimes struct {
	mu sync.Mutex
	m  map[string]*appLife
}

type appLife struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func (l *appLifetimes) of(app string) context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	life := l.m[app]
	if life == nil {
		life = new(appLife)
		life.ctx, life.cancel = context.WithCancel(context.Background())
		l.m[app] = life
	}
	return life.ctx
}

func (l *appLifetimes) end(app string) {
	l.mu.Lock()
	life := l.m[app]
	delete(l.m, app)
	l.mu.Unlock()
	if life != nil {
		life.cancel()
	}
}
