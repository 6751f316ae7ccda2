package flyhandlers

import (
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/flyedge/caddy-flyedge/routing"
)

func init() {
	caddy.RegisterModule(new(ForceHTTPS))
}

// ForceHTTPS redirects plain-HTTP requests to HTTPS with 301 Moved
// Permanently when the app's port the request arrived on has
// force_https set in the fly app. The redirect keeps the host, path and
// query; its port is the app's port that runs the tls and http handlers
// (omitted when it is 443). HTTPS requests, and requests to ports
// without force_https, pass through untouched.
//
// The fly app refuses force_https on a port whose handlers do not
// include http, so a misplaced option fails at config load.
type ForceHTTPS struct {
	app *routing.App
}

// CaddyModule returns the Caddy module information.
func (*ForceHTTPS) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.force_https",
		New: func() caddy.Module { return new(ForceHTTPS) },
	}
}

// Provision finds the fly app.
func (f *ForceHTTPS) Provision(ctx caddy.Context) error {
	app, err := routing.FromContext(ctx)
	if err != nil {
		return err
	}
	f.app = app
	return nil
}

// ServeHTTP redirects or passes the request on.
func (f *ForceHTTPS) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.TLS != nil {
		return next.ServeHTTP(w, r)
	}
	rt, err := f.app.RouteForRequest(r)
	if err != nil || !rt.Port.ForceHTTPS {
		return next.ServeHTTP(w, r)
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
		if strings.Contains(h, ":") { // IPv6: keep the brackets
			host = "[" + h + "]"
		}
	}
	target := "https://" + host
	if p := rt.HTTPSPort; p != 0 && p != 443 {
		target += ":" + strconv.Itoa(p)
	}
	uri := r.RequestURI
	if uri == "" || uri[0] != '/' {
		uri = r.URL.RequestURI()
	}
	w.Header().Set("Location", target+uri)
	w.WriteHeader(http.StatusMovedPermanently)
	return nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	force_https
func (f *ForceHTTPS) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("unrecognized force_https option '%s'", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*ForceHTTPS)(nil)
	_ caddyhttp.MiddlewareHandler = (*ForceHTTPS)(nil)
	_ caddyfile.Unmarshaler       = (*ForceHTTPS)(nil)
)
