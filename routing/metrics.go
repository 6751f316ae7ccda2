package routing

import (
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the fly app's Prometheus collectors, on the registry of
// Caddy's metrics endpoint. Their labels are app and service (the
// service's internal port) and a bounded value (a status class, an
// outcome, a direction), never a host name or a machine ID, so the
// number of series grows with the apps and nothing else. A route
// resolves its series when it first uses them: an app without traffic
// has none.
type metrics struct {
	requests   *prometheus.CounterVec   // app, service, status_class
	duration   *prometheus.HistogramVec // app, service
	bytes      *prometheus.CounterVec   // app, service, direction
	conns      *prometheus.GaugeVec     // app, service, handlers
	selections *prometheus.CounterVec   // app, service, outcome
	replays    *prometheus.CounterVec   // app, result
}

// newMetrics creates the collectors and registers them on reg, reusing
// those another config or module registered already.
func newMetrics(reg *prometheus.Registry) *metrics {
	const ns = "caddy"
	return &metrics{
		requests: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "fly_http", Name: "requests_total",
			Help: "HTTP requests the edge handled for an app, by status class of the answer (1xx..5xx).",
		}, []string{"app", "service", "status_class"})),
		duration: register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: "fly_http", Name: "request_duration_seconds",
			Help:    "Time from the request's arrival at fly_headers to the end of its answer.",
			Buckets: prometheus.DefBuckets,
		}, []string{"app", "service"})),
		bytes: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "fly", Name: "bytes_total",
			Help: "Bytes from clients to an app's machines (in) and back (out): HTTP bodies, and every byte of layer 4 connections.",
		}, []string{"app", "service", "direction"})),
		conns: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: "fly_l4", Name: "open_connections",
			Help: "Layer 4 connections fly_proxy is relaying for an app, by the port's handler list.",
		}, []string{"app", "service", "handlers"})),
		selections: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "fly_routing", Name: "machine_selections_total",
			Help: "Machine choices for an app's requests and connections, by outcome.",
		}, []string{"app", "service", "outcome"})),
		replays: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "fly_http", Name: "replays_total",
			Help: "fly-replay instructions of an app's responses, by result (replayed, fallback, failed).",
		}, []string{"app", "result"})),
	}
}

// register registers c on reg, or returns the equivalent collector
// registered before (another config's, on the same registry).
func register[C prometheus.Collector](reg *prometheus.Registry, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}

// outcomeNames are the outcome label values.
var outcomeNames = [...]string{
	Chosen:                  "chosen",
	PreferredUnavailable:    "preferred_unavailable",
	ForcedUnknown:           "forced_failed",
	ForcedUnavailable:       "forced_failed",
	NoneAvailable:           "none_available",
	ForcedRegionUnavailable: "forced_region_failed",
	Refused:                 "refused",
	AtHardLimit:             "at_hard_limit",
}

// routeMetrics are one route's series, resolved on first use.
type routeMetrics struct {
	m        *metrics
	app, svc string

	requests   [6]atomic.Pointer[prometheus.Counter] // status class 1..5; 0 other
	duration   atomic.Pointer[prometheus.Observer]
	in, out    atomic.Pointer[prometheus.Counter]
	selections [len(outcomeNames)]atomic.Pointer[prometheus.Counter]
}

func newRouteMetrics(m *metrics, app string, s *Service) *routeMetrics {
	if m == nil {
		return nil
	}
	return &routeMetrics{m: m, app: app, svc: strconv.Itoa(s.InternalPort)}
}

// counter returns the series p caches, resolving it with make once.
func counter(p *atomic.Pointer[prometheus.Counter], make func() prometheus.Counter) prometheus.Counter {
	if c := p.Load(); c != nil {
		return *c
	}
	c := make()
	p.Store(&c)
	return c
}

var statusClasses = [6]string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"}

// ObserveRequest records an HTTP request of the route: the status the
// client got, how long it took, and the body bytes in and out.
func (rt *Route) ObserveRequest(status int, d time.Duration, in, out int64) {
	rm := rt.metrics
	if rm == nil {
		return
	}
	class := status / 100
	if class < 1 || class > 5 {
		class = 0
	}
	counter(&rm.requests[class], func() prometheus.Counter {
		return rm.m.requests.WithLabelValues(rm.app, rm.svc, statusClasses[class])
	}).Inc()
	obs := rm.duration.Load()
	if obs == nil {
		o := rm.m.duration.WithLabelValues(rm.app, rm.svc)
		rm.duration.Store(&o)
		obs = &o
	}
	(*obs).Observe(d.Seconds())
	rt.CountBytes(in, out)
}

// CountBytes records bytes from the client to the machine (in) and back
// (out).
func (rt *Route) CountBytes(in, out int64) {
	rm := rt.metrics
	if rm == nil {
		return
	}
	if in > 0 {
		counter(&rm.in, func() prometheus.Counter { return rm.m.bytes.WithLabelValues(rm.app, rm.svc, "in") }).Add(float64(in))
	}
	if out > 0 {
		counter(&rm.out, func() prometheus.Counter { return rm.m.bytes.WithLabelValues(rm.app, rm.svc, "out") }).Add(float64(out))
	}
}

// countSelection records a machine choice of the route.
func (rt *Route) countSelection(o Outcome) {
	rm := rt.metrics
	if rm == nil || int(o) >= len(outcomeNames) {
		return
	}
	counter(&rm.selections[o], func() prometheus.Counter {
		return rm.m.selections.WithLabelValues(rm.app, rm.svc, outcomeNames[o])
	}).Inc()
}

// CountReplay records what became of a fly-replay instruction of the
// route's app: replayed, fallback or failed.
func (rt *Route) CountReplay(result string) {
	if rm := rt.metrics; rm != nil {
		rm.m.replays.WithLabelValues(rm.app, result).Inc()
	}
}

// OpenConn records a layer 4 connection (or UDP flow) being relayed for
// the route; the returned func records its end.
func (rt *Route) OpenConn() func() {
	rm := rt.metrics
	if rm == nil {
		return func() {}
	}
	gp := rt.conns.Load()
	if gp == nil {
		label := rt.Handlers.Label()
		if rt.Service.Protocol == "udp" {
			label = "udp"
		}
		g := rm.m.conns.WithLabelValues(rm.app, rm.svc, label)
		rt.conns.Store(&g)
		gp = &g
	}
	g := *gp
	g.Inc()
	return g.Dec
}
