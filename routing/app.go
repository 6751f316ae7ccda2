package routing

import (
	"fmt"
	"maps"
	"net"
	"strconv"
	"strings"
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

	// How long a request or connection waits for a machine when every
	// machine it may go to is at its service's concurrency hard_limit;
	// then an HTTP client gets a 503 (PR05), a PostgreSQL client an
	// ErrorResponse and a TCP client a close.
	// Default: 5s
	QueueTimeout caddy.Duration `json:"queue_timeout,omitempty"`

	// How a request or connection moves on to the next machine when one
	// does not take it: the bounds every protocol's failover follows
	// (layer 4 fly_proxy and pg_tls, UDP flows, transport fly).
	// Default: 3 attempts, fail_duration 10s
	Failover *Failover `json:"failover,omitempty"`

	// Regions added to the built-in catalog of Fly.io regions, or
	// replacing entries of it, keyed by region code.
	Regions map[string]Region `json:"regions,omitempty"`

	// The apps served by this edge, keyed by app name.
	Apps map[string]*Application `json:"apps,omitempty"`

	failover   Failover // Failover with its defaults filled
	catalog    map[string]Region
	edge       Region
	reg        *registry
	serves     func(port int) bool // the edge's ports, when it lists them (guarded by reg.change)
	servesUDP  func(port int) bool // its UDP ports
	servesList string
	health     *healthChecker
	metrics    *metrics
	logger     *zap.Logger
	ctx        caddy.Context
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
	a.ctx = ctx
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
	if a.QueueTimeout < 0 {
		return fmt.Errorf("queue_timeout: %s must not be negative", time.Duration(a.QueueTimeout))
	}
	if a.QueueTimeout == 0 {
		a.QueueTimeout = caddy.Duration(DefaultQueueTimeout)
	}
	if a.Failover != nil {
		a.failover = *a.Failover
	}
	if err := a.failover.fill(); err != nil {
		return fmt.Errorf("failover: %w", err)
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
	a.reg = reg
	return nil
}

// Start starts the active health checks and warns about HTTP proxies
// that cannot fail over.
func (a *App) Start() error {
	a.health.start(a.reg)
	a.warnWithoutFailover(a.ctx)
	return nil
}

// Stop stops the active health checks.
func (a *App) Stop() error {
	a.health.stop()
	return nil
}

// Cleanup releases the health state this config held.
func (a *App) Cleanup() error {
	if reg := a.reg; reg != nil {
		reg.mu.RLock()
		defer reg.mu.RUnlock()
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
	se := &serviceEntry{app: app, config: s, metrics: newRouteMetrics(a.metrics, app, s), queueTimeout: time.Duration(a.QueueTimeout), failover: a.failover}
	for _, m := range machines {
		if !s.Serves(m.ProcessGroup) {
			continue // a machine of another process group never gets the service's traffic
		}
		mm := &machine{
			id:      m.ID,
			region:  m.Region,
			dial:    net.JoinHostPort(m.Address, strconv.Itoa(s.InternalPort)),
			km:      distanceKm(a.edge, a.catalog[m.Region]),
			stopped: m.State == "stopped",
		}
		key := mm.dial // a machine's load and failures are its service's: tcp and udp on one port are two
		if s.Protocol == "udp" {
			key = "udp/" + key
		}
		mm.health = refs.state(mm.id, key)
		for _, c := range s.Checks {
			mm.checks = append(mm.checks, refs.check(mm.id, mm.dial, c))
		}
		se.machines = append(se.machines, mm)
	}
	se.index(a.catalog)
	return se
}
