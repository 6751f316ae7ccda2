package routing

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(new(FlyUpstreams))
}

// FlyUpstreams is a dynamic upstream source that returns the machines of
// the app a request is for (as RouteForRequest finds it), its service on
// the edge port the request arrived on, one upstream per
// machine at address:internal_port, nearest to the edge first. Use it with
// the `fly` selection policy, which picks among them by the Fly-* request
// headers, region and health.
//
// The lookup is two map reads, whatever the number of apps. The answer is
// the fly app's registry at the time of the request, so machines
// registered live are used at once.
//
//	reverse_proxy {
//		dynamic fly
//		lb_policy fly
//	}
type FlyUpstreams struct {
	app *App
}

// CaddyModule returns the Caddy module information.
func (*FlyUpstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.fly",
		New: func() caddy.Module { return new(FlyUpstreams) },
	}
}

// Provision finds the fly app.
func (u *FlyUpstreams) Provision(ctx caddy.Context) error {
	app, err := FromContext(ctx)
	if err != nil {
		return err
	}
	u.app = app
	return nil
}

// GetUpstreams returns the machines of the request's app and port.
func (u *FlyUpstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	rt, err := u.app.RouteForRequest(r)
	if err != nil {
		return nil, err
	}
	n := len(rt.machines)
	ups := make([]reverseproxy.Upstream, n)
	pool := make([]*reverseproxy.Upstream, n)
	for i, m := range rt.machines {
		ups[i].Dial = m.dial
		pool[i] = &ups[i]
	}
	return pool, nil
}

// UnmarshalCaddyfile sets up the source from Caddyfile tokens. Syntax:
//
//	dynamic fly
func (u *FlyUpstreams) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume source name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("unrecognized fly upstreams option '%s'", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*FlyUpstreams)(nil)
	_ reverseproxy.UpstreamSource = (*FlyUpstreams)(nil)
	_ caddyfile.Unmarshaler       = (*FlyUpstreams)(nil)
)
