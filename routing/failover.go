package routing

import (
	"errors"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
)

// warnWithoutFailover warns about each reverse_proxy of the config's
// HTTP servers that sends requests to the apps' machines (`dynamic fly`
// or `lb_policy fly`) without `transport fly`: failover to the next
// machine lives in that transport, so without it a machine that refuses
// connections answers the client 502 PC01 while another could take the
// request. It runs once the apps are provisioned (from Start).
func (a *App) warnWithoutFailover(ctx caddy.Context) {
	app, err := ctx.AppIfConfigured("http")
	if err != nil {
		if !errors.Is(err, caddy.ErrNotConfigured) {
			a.logger.Debug("reading the http app", zap.Error(err))
		}
		return
	}
	for name, srv := range app.(*caddyhttp.App).Servers {
		var walk func(routes caddyhttp.RouteList)
		walk = func(routes caddyhttp.RouteList) {
			for _, route := range routes {
				for _, h := range route.Handlers {
					switch h := h.(type) {
					case *caddyhttp.Subroute:
						walk(h.Routes)
					case *reverseproxy.Handler:
						if withoutFailover(h) {
							a.logger.Warn(`reverse_proxy sends requests to the apps' machines without "transport fly": a machine that refuses connections answers 502 PC01 where another machine could take the request; add the line "transport fly" to its block`,
								zap.String("server", name))
						}
					}
				}
			}
		}
		walk(srv.Routes)
		if srv.Errors != nil {
			walk(srv.Errors.Routes)
		}
		for _, r := range srv.NamedRoutes { // `invoke`d routes
			walk(caddyhttp.RouteList{*r})
		}
	}
}

// withoutFailover tells whether h routes by the fly app (its upstreams or
// selection policy) with another transport than transport fly.
func withoutFailover(h *reverseproxy.Handler) bool {
	_, dynamic := h.DynamicUpstreams.(*FlyUpstreams)
	policy := false
	if h.LoadBalancing != nil {
		_, policy = h.LoadBalancing.SelectionPolicy.(*FlySelection)
	}
	_, transport := h.Transport.(*FlyTransport)
	return (dynamic || policy) && !transport
}
