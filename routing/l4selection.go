package routing

import (
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/mholt/caddy-l4/layer4"
	"github.com/mholt/caddy-l4/modules/l4proxy"
)

func init() {
	caddy.RegisterModule(new(FlyL4Selection))
}

// FlyL4Selection is a load-balancing policy for caddy-l4's proxy handler
// that chooses among the upstreams by the fly app's region logic: of the
// upstreams that are machines of the connection's app (matched by dial
// address, host:internal_port), the nearest healthy one to the edge,
// spreading connections among the machines of a region. Upstreams that
// are not machines of the app are never chosen.
//
// Health is the fly app's view: started machines that pass their service's
// checks and have not refused a fly_proxy connection lately. caddy-l4
// keeps its own passive health state private, so it does not take part;
// fly_proxy, which reads the app's machines live and relays zero-copy, is
// the handler to prefer.
//
//	proxy 10.0.0.1:5432 10.0.0.2:5432 {
//		lb_policy fly
//	}
type FlyL4Selection struct {
	app *App
}

// CaddyModule returns the Caddy module information.
func (*FlyL4Selection) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.proxy.selection_policies.fly",
		New: func() caddy.Module { return new(FlyL4Selection) },
	}
}

// Provision finds the fly app.
func (s *FlyL4Selection) Provision(ctx caddy.Context) error {
	app, err := FromContext(ctx)
	if err != nil {
		return err
	}
	s.app = app
	return nil
}

// subsetPool allows only the machines present in the proxy's pool.
type subsetPool struct {
	inPool []int // machine index -> pool index + 1 (0: absent)
}

func (p subsetPool) Usable(i int) bool { return p.inPool[i] > 0 }
func (subsetPool) Load(int) int        { return 0 }

// Select chooses the upstream for the connection.
func (s *FlyL4Selection) Select(pool l4proxy.UpstreamPool, cx *layer4.Connection) *l4proxy.Upstream {
	rt, err := s.app.RouteForConn(cx)
	if err != nil {
		return nil
	}
	sp := subsetPool{inPool: make([]int, len(rt.machines))}
	for k, u := range pool {
		for _, d := range u.Dial {
			if i, ok := rt.byDial[strings.TrimPrefix(d, "tcp/")]; ok {
				sp.inPool[i] = k + 1
			}
		}
	}
	i, outcome, _ := SelectUnderLimits(rt, sp, Preference{})
	rt.countSelection(outcome)
	if i < 0 {
		return nil
	}
	return pool[sp.inPool[i]-1]
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy fly
func (s *FlyL4Selection) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume policy name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("unrecognized fly policy option '%s'", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*FlyL4Selection)(nil)
	_ l4proxy.Selector      = (*FlyL4Selection)(nil)
	_ caddyfile.Unmarshaler = (*FlyL4Selection)(nil)
)
