package routing

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
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
	hosts    map[string]*appSlot         // <app>.<base_domain> and config host names; read through hostApp
	ports    map[int]map[string]*appSlot // the apps with a service on an edge port
	machines map[string]string           // machine ID -> app
	// the config's machines: machine ID -> app; set by build, never changed
	configMachines map[string]string

	// learned from the store
	byAddress   bool
	sharedAddrs map[netip.Addr]bool
	dedicated   map[netip.Addr]string
	shared      map[sharedKey]bool
	liveHosts   map[string]string   // certs-API host names -> app; read through hostApp
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

	failover Failover // the fly app's failover bounds, defaults filled
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
