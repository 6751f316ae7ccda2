package routing

import (
	"cmp"
	"context"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Route is where connections for one edge port of one app go: the port's
// handlers and options, and the machines of the service behind it,
// nearest to the edge first.
type Route struct {
	// App is the name of the app.
	App string

	// Port is the edge port and its handlers.
	Port *Port

	// Service is the service the port belongs to.
	Service *Service

	// Hostname is the app's own name, <app>.<base_domain>: the
	// certificate a TLS client without SNI gets.
	Hostname string

	// Via is the edge's name in Via headers.
	Via string

	// PortString is Port.Port in decimal.
	PortString string

	// Handlers are the port's handlers.
	Handlers Handlers

	// TLSMinVersion and TLSMaxVersion are the port's tls_options.versions
	// as crypto/tls versions.
	TLSMinVersion, TLSMaxVersion uint16

	// ProxyProtoVersion is the port's proxy_proto_options.version: 1 or 2.
	ProxyProtoVersion byte

	// HTTPSPort is the app's port that runs the tls and http handlers,
	// where force_https sends plain-HTTP requests; 0 when there is none.
	HTTPSPort int

	conns atomic.Pointer[prometheus.Gauge] // open connections, resolved on first use
	life  context.Context                  // ends when the app is destroyed

	*serviceEntry
}

// Destroyed returns a channel that is closed when the app is destroyed
// through the admin API: a connection to the app ends then.
func (rt *Route) Destroyed() <-chan struct{} { return rt.life.Done() }

// AppContext returns a context that ends when the app is destroyed
// through the admin API (see context.AfterFunc).
func (rt *Route) AppContext() context.Context { return rt.life }

// String returns the app name, so {http.vars.fly.route} reads well.
func (rt *Route) String() string { return rt.App }

// NumMachines returns how many machines the route has.
func (rt *Route) NumMachines() int { return len(rt.machines) }

// MachineID returns the ID of machine i.
func (rt *Route) MachineID(i int) string { return rt.machines[i].id }

// MachineDial returns the address:internal_port machine i is reached at.
func (rt *Route) MachineDial(i int) string { return rt.machines[i].dial }

// MachineFailed leaves machine i out of selection for the fail duration
// of the fly app's failover (a datagram to it failed; Connect does the
// same for the connections it dials).
func (rt *Route) MachineFailed(i int) {
	rt.machines[i].health.failedUntil.Store(time.Now().Add(time.Duration(rt.failover.FailDuration)).UnixNano())
}

// MachineRegion returns the region of machine i.
func (rt *Route) MachineRegion(i int) string { return rt.machines[i].region }

// HardLimit returns the service's concurrency hard limit, 0 for none.
func (rt *Route) HardLimit() int {
	if c := rt.Service.Concurrency; c != nil {
		return c.HardLimit
	}
	return 0
}

// MachineIndex returns the index of the machine with the given ID, or -1.
func (rt *Route) MachineIndex(id string) int {
	if i, ok := rt.byID[id]; ok {
		return i
	}
	return -1
}

func newRoute(app, hostname, via string, p *Port, se *serviceEntry, services []*Service) *Route {
	rt := &Route{App: app, Hostname: hostname, Via: via, Port: p, PortString: strconv.Itoa(p.Port), Service: se.config, serviceEntry: se, Handlers: p.handlers}
	var versions []string
	if p.TLSOptions != nil {
		versions = p.TLSOptions.Versions
	}
	rt.TLSMinVersion, rt.TLSMaxVersion, _ = TLSVersionRange(versions) // validated before
	rt.ProxyProtoVersion = 1
	if o := p.ProxyProtoOptions; o != nil {
		v, _ := ProxyProtoVersion(o.Version) // validated before
		rt.ProxyProtoVersion = max(v, 1)
	}
	for _, s := range services {
		for _, q := range s.Ports {
			if q.handlers == HandlerTLS|HandlerHTTP && (rt.HTTPSPort == 0 || q.Port == 443) {
				rt.HTTPSPort = q.Port
			}
		}
	}
	return rt
}

// index sorts the service's machines by distance from the edge and builds
// the lookups selection uses: by machine ID, distance tiers, and groups
// by region, country and continent code.
func (se *serviceEntry) index(catalog map[string]Region) {
	slices.SortStableFunc(se.machines, func(a, b *machine) int {
		return cmp.Or(cmp.Compare(a.km, b.km), strings.Compare(a.region, b.region), strings.Compare(a.id, b.id))
	})
	se.byID = make(map[string]int, len(se.machines))
	se.byDial = make(map[string]int, len(se.machines))
	se.groups = make(map[string][][]int)
	for i, m := range se.machines {
		se.byID[m.id] = i
		se.byDial[m.dial] = i
		if i == 0 || m.km != se.machines[i-1].km {
			se.tiers = append(se.tiers, nil)
		}
		se.tiers[len(se.tiers)-1] = append(se.tiers[len(se.tiers)-1], i)
		r := catalog[m.region]
		for _, key := range []string{m.region, r.Country, r.Continent} {
			if key == r.Country && continents[key] {
				continue // the letters mean the continent (see continents)
			}
			tiers := se.groups[key]
			if n := len(tiers); n == 0 || se.machines[tiers[n-1][0]].km != m.km {
				tiers = append(tiers, nil)
			}
			tiers[len(tiers)-1] = append(tiers[len(tiers)-1], i)
			se.groups[key] = tiers
		}
	}
	if c := se.config.Concurrency; c != nil {
		se.softLimit = c.SoftLimit
	}
}

// Pool is what selection knows of a route's machines beyond the edge's
// own view: whether the proxy may use machine i now, and its current load.
// Index i is the machine's index in the route.
type Pool interface {
	Usable(i int) bool
	Load(i int) int
}

// Preference is what a client asked for, from the Fly-* request headers.
type Preference struct {
	// ForceInstance is the machine ID of Fly-Force-Instance-Id.
	ForceInstance string
	// PreferInstance is the machine ID of Fly-Prefer-Instance-Id.
	PreferInstance string
	// PreferRegions is the value of Fly-Prefer-Region, an ordered,
	// comma-separated list of region, country or continent codes.
	PreferRegions string
	// ForceRegion is the value of Fly-Force-Region, or a fly-replay's
	// region: an ordered, comma-separated list of region, country or
	// continent codes; only their machines may be chosen, the first entry
	// with a usable machine wins, and "any" allows every machine.
	ForceRegion string
	// Exclude is the ID of a machine not to choose (fly-replay's
	// elsewhere).
	Exclude string
}

// Outcome tells why Select chose no machine, or that a preferred machine
// was passed over.
type Outcome int

// Outcomes of Select.
const (
	Chosen                  Outcome = iota // a machine was chosen as asked
	PreferredUnavailable                   // chosen, but not the preferred instance
	ForcedUnknown                          // the forced instance is no machine of the app
	ForcedUnavailable                      // the forced instance cannot take traffic now
	NoneAvailable                          // no machine can take traffic
	ForcedRegionUnavailable                // no machine of the forced region can take traffic
	Refused                                // every machine tried refused the connection
	AtHardLimit                            // every machine that could be chosen stayed at its hard limit for the queue timeout
)

// Select chooses a machine of the route for one request or connection and
// returns its index, or -1 with the reason. The rules, in order:
// a forced instance or nothing; a forced region (the nearest usable
// machine of that region, country or continent) or nothing; a preferred
// instance if usable; the first
// entry of the preferred regions with a usable machine; else the nearest
// region with a usable machine below the soft limit, spreading load among
// the machines of that region; else the nearest usable machine at all.
func Select[P Pool](rt *Route, p P, pref Preference) (int, Outcome) {
	if pref.Exclude != "" {
		if x, ok := rt.byID[pref.Exclude]; ok {
			return choose(rt, excluding[P]{p, x}, pref)
		}
	}
	return choose(rt, p, pref)
}

// choose is Select without the excluded machine.
func choose[P Pool](rt *Route, p P, pref Preference) (int, Outcome) {
	se := rt.serviceEntry
	if pref.ForceInstance != "" {
		i, ok := se.byID[pref.ForceInstance]
		if !ok {
			return -1, ForcedUnknown
		}
		if !se.machines[i].available() || !p.Usable(i) {
			return -1, ForcedUnavailable
		}
		return i, Chosen
	}
	if pref.ForceRegion != "" {
		for list := pref.ForceRegion; list != ""; {
			var code string
			code, list, _ = strings.Cut(list, ",")
			code = strings.TrimSpace(code)
			if code == "" {
				continue
			}
			tiers, ok := se.groups[code]
			switch {
			case strings.EqualFold(code, "any"):
				tiers = se.tiers
			case !ok:
				tiers = se.groups[strings.ToLower(code)]
			}
			if i := pickTiers(se, p, tiers, se.softLimit); i >= 0 {
				return i, Chosen
			}
		}
		return -1, ForcedRegionUnavailable
	}
	outcome := Chosen
	if pref.PreferInstance != "" {
		if i, ok := se.byID[pref.PreferInstance]; ok && se.machines[i].available() && p.Usable(i) {
			return i, Chosen
		}
		outcome = PreferredUnavailable
	}
	for list := pref.PreferRegions; list != ""; {
		var code string
		code, list, _ = strings.Cut(list, ",")
		code = strings.TrimSpace(code)
		if tiers, ok := se.groups[code]; ok {
			if i := pickTiers(se, p, tiers, 0); i >= 0 {
				return i, outcome
			}
		} else if code != strings.ToLower(code) {
			if i := pickTiers(se, p, se.groups[strings.ToLower(code)], 0); i >= 0 {
				return i, outcome
			}
		}
	}
	if i := pickTiers(se, p, se.tiers, se.softLimit); i >= 0 {
		return i, outcome
	}
	return -1, NoneAvailable
}

// pickTiers returns the least-loaded usable machine of the first tier that
// has one below the soft limit (0: no limit), else the first usable
// machine found over it, else -1.
func pickTiers[P Pool](se *serviceEntry, p P, tiers [][]int, soft int) int {
	over := -1
	for _, tier := range tiers {
		best, bestLoad := -1, 0
		n := len(tier)
		start := 0
		if n > 1 {
			start = rand.IntN(n)
		}
		for k := range n {
			i := tier[(start+k)%n]
			if !se.machines[i].available() || !p.Usable(i) {
				continue
			}
			if l := p.Load(i); best < 0 || l < bestLoad {
				best, bestLoad = i, l
			}
		}
		if best < 0 {
			continue
		}
		if soft <= 0 || bestLoad < soft {
			return best
		}
		if over < 0 {
			over = best
		}
	}
	return over
}

// excluding is a pool without machine x.
type excluding[P Pool] struct {
	p P
	x int
}

func (e excluding[P]) Usable(i int) bool { return i != e.x && e.p.Usable(i) }
func (e excluding[P]) Load(i int) int    { return e.p.Load(i) }

// MachineByDial returns the index of the machine reached at dial
// (host:internal_port), or -1.
func (rt *Route) MachineByDial(dial string) int {
	if i, ok := rt.byDial[dial]; ok {
		return i
	}
	return -1
}
