// Package caddyfile registers flyedge's Caddyfile global options (`fly`,
// `fly_ips`, `fly_edge`) and its HTTP handler directives, and places the
// directives in Caddy's directive order so a Caddyfile needs no `order`
// line.
//
// Order, and why:
//
//   - force_https runs before redir: a plain-HTTP request for an app
//     whose port forces HTTPS is redirected before anything else looks
//     at it, as on Fly.io, where the redirect happens at the edge.
//   - fly_headers runs before reverse_proxy: it is the last step before
//     the request is proxied, after every handler that rewrites or
//     answers the request itself (respond, rewrite, ...), so the headers
//     reflect the request that really leaves for the app.
package caddyfile

import (
	"encoding/json"
	"fmt"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/flyedge/caddy-flyedge/edge"
	"github.com/flyedge/caddy-flyedge/flyhandlers"
	"github.com/flyedge/caddy-flyedge/ipalloc"
	"github.com/flyedge/caddy-flyedge/routing"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("fly", parseFly)
	httpcaddyfile.RegisterGlobalOption("fly_ips", parseFlyIPs)
	httpcaddyfile.RegisterGlobalOption("fly_edge", parseFlyEdge)
	httpcaddyfile.RegisterHandlerDirective("force_https", parseForceHTTPS)
	httpcaddyfile.RegisterDirectiveOrder("force_https", httpcaddyfile.Before, "redir")
	httpcaddyfile.RegisterHandlerDirective("fly_headers", parseFlyHeaders)
	httpcaddyfile.RegisterDirectiveOrder("fly_headers", httpcaddyfile.Before, "reverse_proxy")
}

// parseFly sets up the fly app from the global option; repeated `fly`
// blocks are merged.
func parseFly(d *caddyfile.Dispenser, existingVal any) (any, error) {
	app := new(routing.App)
	if existing, ok := existingVal.(httpcaddyfile.App); ok {
		if err := json.Unmarshal(existing.Value, app); err != nil {
			return nil, fmt.Errorf("merging fly options: %w", err)
		}
	}
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "fly", Value: caddyconfig.JSON(app, nil)}, nil
}

// parseFlyIPs sets up the fly_ips app from the global option; repeated
// blocks are merged. It still takes the edge's options (ports, issuer,
// ...), which are the fly_edge option's now: they go into fly_ips' own
// deprecated fields, from which fly_ips loads the edge with a warning.
func parseFlyIPs(d *caddyfile.Dispenser, existingVal any) (any, error) {
	app := new(ipalloc.App)
	if existing, ok := existingVal.(httpcaddyfile.App); ok {
		if err := json.Unmarshal(existing.Value, app); err != nil {
			return nil, fmt.Errorf("merging fly_ips options: %w", err)
		}
	}
	e := new(edge.Edge) // the deprecated edge options
	if app.Edge != nil {
		if err := json.Unmarshal(app.Edge, e); err != nil {
			return nil, fmt.Errorf("merging fly_ips options: %w", err)
		}
	}
	e.Ports, e.UDPPorts = app.Ports, app.UDPPorts
	d.Next() // option name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		ok, err := app.UnmarshalOption(d)
		if err == nil && !ok {
			ok, err = e.UnmarshalOption(d)
		}
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, d.Errf("unrecognized fly_ips option '%s'", d.Val())
		}
	}
	app.Ports, app.UDPPorts = e.Ports, e.UDPPorts
	e.Ports, e.UDPPorts = nil, nil
	app.Edge = nil
	if edgeSettings := caddyconfig.JSON(e, nil); string(edgeSettings) != "{}" {
		app.Edge = edgeSettings
	}
	return httpcaddyfile.App{Name: "fly_ips", Value: caddyconfig.JSON(app, nil)}, nil
}

// parseFlyEdge sets up the fly_edge app from the global option; repeated
// blocks are merged.
func parseFlyEdge(d *caddyfile.Dispenser, existingVal any) (any, error) {
	e := new(edge.Edge)
	if existing, ok := existingVal.(httpcaddyfile.App); ok {
		if err := json.Unmarshal(existing.Value, e); err != nil {
			return nil, fmt.Errorf("merging fly_edge options: %w", err)
		}
	}
	if err := e.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "fly_edge", Value: caddyconfig.JSON(e, nil)}, nil
}

func parseForceHTTPS(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	f := new(flyhandlers.ForceHTTPS)
	err := f.UnmarshalCaddyfile(h.Dispenser)
	return f, err
}

func parseFlyHeaders(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	fh := new(flyhandlers.Headers)
	err := fh.UnmarshalCaddyfile(h.Dispenser)
	return fh, err
}
