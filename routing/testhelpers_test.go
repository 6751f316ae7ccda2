package routing

import (
	"context"
	"net/netip"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// provision provisions a fly app as Caddy would.
func provision(t testing.TB, a *App) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	err := a.Provision(ctx)
	t.Cleanup(func() { _ = a.Cleanup() })
	return err
}

// pool is a Pool with settable state, standing in for the proxy's view of
// the upstreams (Caddy's passive health and in-flight counts).
type pool struct {
	down map[int]bool
	load map[int]int
}

func (p pool) Usable(i int) bool { return !p.down[i] }
func (p pool) Load(i int) int    { return p.load[i] }

// routeFor resolves a connection to port that names host, without
// address routing (no local address).
func routeFor(a *App, host string, port int) (*Route, error) {
	return a.resolve(netip.Addr{}, port, normalizeName(host))
}
