package ipalloc

import (
	"context"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

func init() {
	caddy.RegisterModule(new(Permission))
}

// Permission (`tls.permission.fly`) allows on-demand certificates for
// the host names apps answer to, and for no other name: an app's own
// <app>.<base_domain>, the host names of its config, and the custom host
// names added through the certs API.
//
//	on_demand_tls {
//		permission fly
//	}
type Permission struct {
	ips *App
}

// CaddyModule returns the Caddy module information.
func (*Permission) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.permission.fly",
		New: func() caddy.Module { return new(Permission) },
	}
}

// Provision finds the fly_ips app.
func (p *Permission) Provision(ctx caddy.Context) error {
	app, err := ctx.App("fly_ips")
	if err != nil {
		return fmt.Errorf("loading the fly_ips app: %w", err)
	}
	p.ips = app.(*App)
	return nil
}

// CertificateAllowed implements caddytls.OnDemandPermission.
func (p *Permission) CertificateAllowed(_ context.Context, name string) error {
	if p.ips.HostApp(name) == "" {
		return fmt.Errorf("%s: %w: no app answers to this host name", name, caddytls.ErrPermissionDenied)
	}
	return nil
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens; it takes
// no options.
func (p *Permission) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() || d.NextBlock(0) {
		return d.Err("permission fly takes no options")
	}
	return nil
}

// Interface guards
var (
	_ caddytls.OnDemandPermission = (*Permission)(nil)
	_ caddy.Provisioner           = (*Permission)(nil)
	_ caddyfile.Unmarshaler       = (*Permission)(nil)
)
