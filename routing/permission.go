package routing

import (
	"context"
	"crypto/tls"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
)

func init() {
	caddy.RegisterModule(new(Permission))
}

// Permission (`tls.permission.fly`) allows on-demand certificates for
// the host names apps answer to, and for no other name: an app's own
// <app>.<base_domain>, the host names of its config, and the custom host
// names added through the certs API. During a handshake, the connection
// must also reach the app the name belongs to (App.Resolve, with
// the address it arrived on): no certificate is obtained for a name on
// an address where that name's app is not served (another app's
// dedicated address, say).
//
//	on_demand_tls {
//		permission fly
//	}
type Permission struct {
	fly *App
}

// CaddyModule returns the Caddy module information.
func (*Permission) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.permission.fly",
		New: func() caddy.Module { return new(Permission) },
	}
}

// Provision finds the fly app. It does not load the fly_ips app, as the
// matchers do: the tls app provisions its permission halfway through its
// own Provision, and fly_ips, which adds the edge's automation policy to
// the tls app, must find that app whole (with this permission set). The
// fly_ips app of the config is loaded as an app of its own.
func (p *Permission) Provision(ctx caddy.Context) error {
	fly, err := FromContext(ctx)
	p.fly = fly
	return err
}

// CertificateAllowed implements caddytls.OnDemandPermission.
func (p *Permission) CertificateAllowed(ctx context.Context, name string) error {
	owner := p.fly.HostApp(name)
	if owner == "" {
		return fmt.Errorf("%s: %w: no app answers to this host name", name, caddytls.ErrPermissionDenied)
	}
	// during a handshake: only where the connection reaches that app
	if hello, ok := ctx.Value(certmagic.ClientHelloInfoCtxKey).(*tls.ClientHelloInfo); ok && hello.Conn != nil {
		rt, err := p.fly.Resolve(hello.Conn.LocalAddr(), name)
		if err != nil {
			return fmt.Errorf("%s: %w: %w", name, caddytls.ErrPermissionDenied, err)
		}
		if rt.App != owner {
			return fmt.Errorf("%s: %w: the name is app %s's, the connection reaches app %s", name, caddytls.ErrPermissionDenied, owner, rt.App)
		}
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
