package routing

import (
	"context"
	"crypto/tls"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// machineHealth is what the edge knows of one machine's service besides
// its checks: until when a failed connection attempt keeps it out of
// selection (layer 4 only: HTTP uses Caddy's passive health checks), and
// its connections in flight. It lives in a UsagePool keyed by machine
// and dial address, so a config reload keeps it.
type machineHealth struct {
	failedUntil atomic.Int64 // unix nanoseconds; 0 when it has not failed
	conns       atomic.Int64
}

// Destruct implements caddy.Destructor.
func (*machineHealth) Destruct() error { return nil }

// checkResult is the outcome of the latest run of one active check on
// one machine: each check of a service keeps its own, so a machine is
// healthy when all of them pass, and a check removed from the config
// stops counting. It lives in the UsagePool too (keyed by machine, dial
// address and check), so a reload keeps it.
type checkResult struct{ ok atomic.Bool }

// Destruct implements caddy.Destructor.
func (*checkResult) Destruct() error { return nil }

var healthStates = caddy.NewUsagePool()

// The rate of the probes (one run of one check on one machine), bounded
// per app and for the whole edge, so that many checks (or many machines)
// cannot take the edge's CPU: a probe waits for its turn, and a check
// whose turn comes late runs less often than its interval asks, keeping
// its latest result meanwhile. The per-app bound keeps one app from
// taking the whole edge's budget from the others.
var (
	// probesPerApp is how many probes per second the checks of one app
	// may run, with bursts of as many.
	probesPerApp = 50
	// probesPerEdge paces the probes of the checks of all the apps
	// together: 500 a second, with bursts of as many. It lives across
	// reloads: the budget is the process's.
	probesPerEdge = newPacer(500)
)

// pacer spaces events to at most rate a second, allowing bursts of rate
// after a quiet second (the generic cell rate algorithm).
type pacer struct {
	every time.Duration
	burst time.Duration

	mu  sync.Mutex
	tat time.Time // the theoretical arrival time of the next event
}

func newPacer(rate int) *pacer {
	every := time.Second / time.Duration(max(rate, 1))
	return &pacer{every: every, burst: time.Duration(max(rate, 1)) * every}
}

// wait takes a turn, waiting for it; false when ctx ended first (the
// turn is spent).
func (p *pacer) wait(ctx context.Context) bool {
	p.mu.Lock()
	now := time.Now()
	start := now.Add(-p.burst + p.every)
	if p.tat.After(start) {
		start = p.tat
	}
	p.tat = start.Add(p.every)
	p.mu.Unlock()
	d := start.Sub(now)
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// healthChecker runs the active health checks of the services of one
// config. Each app's checks run under their own context, so registering
// machines live restarts the checks of that app only.
type healthChecker struct {
	logger *zap.Logger

	mu     sync.Mutex
	ctx    context.Context // nil until start
	cancel context.CancelFunc
	perApp map[string]context.CancelFunc
	pacers map[string]*pacer // each app's probe budget, kept while the config lasts
	wg     sync.WaitGroup
}

func newHealthChecker(logger *zap.Logger) *healthChecker {
	return &healthChecker{logger: logger, perApp: make(map[string]context.CancelFunc), pacers: make(map[string]*pacer)}
}

// healthRefs are the references of one app entry into healthStates.
type healthRefs struct {
	mu   sync.Mutex
	keys []string
}

// state returns the shared health state of a machine's service.
func (r *healthRefs) state(id, dial string) *machineHealth {
	return r.load(id+"|"+dial, func() caddy.Destructor { return new(machineHealth) }).(*machineHealth)
}

// check returns the shared result of check c on a machine's service,
// passing until the check says otherwise.
func (r *healthRefs) check(id, dial string, c *Check) *checkResult {
	key := id + "|" + dial + "|" + c.key()
	return r.load(key, func() caddy.Destructor {
		res := new(checkResult)
		res.ok.Store(true)
		return res
	}).(*checkResult)
}

// key tells checks apart: two checks of a service that probe the same
// way share their result.
func (c *Check) key() string {
	var b strings.Builder
	b.WriteString(c.Type + " " + c.Path) // the key of a check before headers and https
	if c.Protocol == "https" {
		fmt.Fprintf(&b, " https skip=%t sni=%s", c.TLSSkipVerify, c.TLSServerName)
	}
	for _, name := range slices.Sorted(maps.Keys(c.Headers)) {
		fmt.Fprintf(&b, " %q:%q", name, c.Headers[name])
	}
	return b.String()
}

func (r *healthRefs) load(key string, newState func() caddy.Destructor) caddy.Destructor {
	v, _, _ := healthStates.LoadOrNew(key, func() (caddy.Destructor, error) { return newState(), nil })
	r.mu.Lock()
	r.keys = append(r.keys, key)
	r.mu.Unlock()
	return v.(caddy.Destructor)
}

// release drops the entry's references to the health states.
func (r *healthRefs) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range r.keys {
		_, _ = healthStates.Delete(k)
	}
	r.keys = nil
}

// start runs one goroutine per check and machine of every app.
func (hc *healthChecker) start(reg *registry) {
	hc.mu.Lock()
	hc.ctx, hc.cancel = context.WithCancel(context.Background())
	hc.mu.Unlock()
	reg.mu.RLock()
	entries := make([]*appEntry, 0, len(reg.apps))
	for _, slot := range reg.apps {
		entries = append(entries, slot.load())
	}
	reg.mu.RUnlock()
	for _, e := range entries {
		hc.restart(e)
	}
}

// restart replaces the checks of e's app with checks of e's machines.
func (hc *healthChecker) restart(e *appEntry) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if hc.ctx == nil || hc.ctx.Err() != nil {
		return
	}
	if cancel := hc.perApp[e.name]; cancel != nil {
		cancel()
		delete(hc.perApp, e.name)
	}
	pace := hc.pacers[e.name]
	if pace == nil {
		pace = newPacer(probesPerApp)
		hc.pacers[e.name] = pace
	}
	var ctx context.Context
	for _, se := range e.services {
		for ci, c := range se.config.Checks {
			for _, m := range se.machines {
				if ctx == nil {
					var cancel context.CancelFunc
					ctx, cancel = context.WithCancel(hc.ctx)
					hc.perApp[e.name] = cancel
				}
				hc.wg.Add(1)
				go hc.run(ctx, pace, se.app, m, c, m.checks[ci])
			}
		}
	}
}

// forget ends the checks of a removed app.
func (hc *healthChecker) forget(app string) {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if cancel := hc.perApp[app]; cancel != nil {
		cancel()
		delete(hc.perApp, app)
	}
	delete(hc.pacers, app)
}

// stop ends the checks and waits for them.
func (hc *healthChecker) stop() {
	hc.mu.Lock()
	if hc.cancel != nil {
		hc.cancel()
	}
	hc.mu.Unlock()
	hc.wg.Wait()
}

func (hc *healthChecker) run(ctx context.Context, pace *pacer, app string, m *machine, c *Check, res *checkResult) {
	defer hc.wg.Done()
	defer func() {
		if err := recover(); err != nil {
			hc.logger.Error("health check panicked", zap.String("app", app), zap.String("machine", m.id), zap.Any("error", err))
		}
	}()
	// an app stored before the floors may have less: it gets the floor
	interval := time.Duration(c.Interval)
	if interval <= 0 {
		interval = 10 * time.Second
	}
	interval = max(interval, MinCheckInterval)
	timeout := time.Duration(c.Timeout)
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	timeout = max(timeout, MinCheckTimeout)
	var client *http.Client
	if c.Type == "http" {
		client = probeClient(c, timeout)
	}
	grace := time.Duration(c.GracePeriod)
	if grace <= 0 {
		grace = time.Second
	}
	select {
	case <-ctx.Done():
		return
	case <-time.After(grace):
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if !pace.wait(ctx) || !probesPerEdge.wait(ctx) {
			return
		}
		err := check(ctx, client, m.dial, c, timeout)
		if was := res.ok.Swap(err == nil); was != (err == nil) {
			if err != nil {
				hc.logger.Warn("machine failed health check", zap.String("app", app), zap.String("machine", m.id),
					zap.String("address", m.dial), zap.String("check", c.Type), zap.Error(err))
			} else {
				hc.logger.Info("machine passed health check", zap.String("app", app), zap.String("machine", m.id),
					zap.String("address", m.dial), zap.String("check", c.Type))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probeClient is the client of an http check: one connection a probe,
// no redirects followed, bounded by timeout; an https check verifies the
// machine's certificate for tls_server_name (else for its address)
// unless tls_skip_verify.
func probeClient(c *Check, timeout time.Duration) *http.Client {
	tr := &http.Transport{DisableKeepAlives: true, TLSHandshakeTimeout: timeout}
	if c.Protocol == "https" {
		tr.TLSClientConfig = &tls.Config{
			ServerName:         c.TLSServerName,
			InsecureSkipVerify: c.TLSSkipVerify, //nolint:gosec // the check's own choice, as Fly's tls_skip_verify
			MinVersion:         tls.VersionTLS12,
		}
	}
	return &http.Client{
		Timeout:       timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport:     tr,
	}
}

// check runs one check against dial.
func check(ctx context.Context, client *http.Client, dial string, c *Check, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if c.Type == "tcp" {
		conn, err := new(net.Dialer).DialContext(ctx, "tcp", dial)
		if err != nil {
			return err
		}
		return conn.Close()
	}
	path := c.Path
	if path == "" {
		path = "/"
	}
	scheme := "http://"
	if c.Protocol == "https" {
		scheme = "https://"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+dial+path, nil)
	if err != nil {
		return err
	}
	for name, val := range c.Headers {
		if strings.EqualFold(name, "Host") {
			req.Host = val
			continue
		}
		req.Header.Set(name, val)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode >= 400 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}
