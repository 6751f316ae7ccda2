package routing

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// machineHealth is what the edge knows of one machine's service: the
// outcome of the latest active health check, until when a failed
// connection attempt keeps it out of selection (layer 4 only: HTTP uses
// Caddy's passive health checks), and its connections in flight. It lives
// in a UsagePool keyed by machine and dial address, so a config reload
// keeps it.
type machineHealth struct {
	healthy     atomic.Bool
	failedUntil atomic.Int64 // unix nanoseconds; 0 when it has not failed
	conns       atomic.Int64
}

// now is the clock of passive health; tests replace it.
var now = time.Now

// Destruct implements caddy.Destructor.
func (*machineHealth) Destruct() error { return nil }

var healthStates = caddy.NewUsagePool()

// healthChecker runs the active health checks of the services of one
// config and holds its references into healthStates.
type healthChecker struct {
	logger *zap.Logger
	keys   []string
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newHealthChecker(logger *zap.Logger) *healthChecker {
	return &healthChecker{logger: logger}
}

// state returns the shared health state of a machine's service, healthy
// until a check says otherwise.
func (hc *healthChecker) state(id, dial string) *machineHealth {
	key := id + "|" + dial
	v, _, _ := healthStates.LoadOrNew(key, func() (caddy.Destructor, error) {
		h := new(machineHealth)
		h.healthy.Store(true)
		return h, nil
	})
	hc.keys = append(hc.keys, key)
	return v.(*machineHealth)
}

// release drops this config's references to the health states.
func (hc *healthChecker) release() {
	for _, k := range hc.keys {
		_, _ = healthStates.Delete(k)
	}
	hc.keys = nil
}

// start runs one goroutine per check and machine.
func (hc *healthChecker) start(reg *registry) {
	ctx, cancel := context.WithCancel(context.Background())
	hc.cancel = cancel
	for _, e := range reg.apps {
		for _, se := range e.services {
			for _, c := range se.config.Checks {
				for _, m := range se.machines {
					hc.wg.Add(1)
					go hc.run(ctx, se.app, m, c)
				}
			}
		}
	}
}

// stop ends the checks and waits for them.
func (hc *healthChecker) stop() {
	if hc.cancel != nil {
		hc.cancel()
	}
	hc.wg.Wait()
}

func (hc *healthChecker) run(ctx context.Context, app string, m *machine, c *Check) {
	defer hc.wg.Done()
	defer func() {
		if err := recover(); err != nil {
			hc.logger.Error("health check panicked", zap.String("app", app), zap.String("machine", m.id), zap.Any("error", err))
		}
	}()
	interval := time.Duration(c.Interval)
	if interval <= 0 {
		interval = 10 * time.Second
	}
	timeout := time.Duration(c.Timeout)
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	var client *http.Client
	if c.Type == "http" {
		client = &http.Client{
			Timeout:       timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Transport:     &http.Transport{DisableKeepAlives: true},
		}
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
		err := check(ctx, client, m.dial, c, timeout)
		if was := m.health.healthy.Swap(err == nil); was != (err == nil) {
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+dial+path, nil)
	if err != nil {
		return err
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
