package flyhandlers

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/mholt/caddy-l4/layer4"
	"github.com/pires/go-proxyproto"

	"github.com/flyedge/caddy-flyedge/routing"
)

func init() {
	caddy.RegisterModule(new(ProxyProto))
}

// ProxyProto is Fly.io's proxy_proto handler: the connection to the
// machine begins with a PROXY protocol header
// (https://www.haproxy.org/download/1.8/doc/proxy-protocol.txt) that
// carries the client's address and the address the client connected to,
// so the app learns who its client is. It is an intermediary layer4
// handler: it prepares the header and passes the connection on; the
// fly_proxy handler that follows sends it before the client's bytes.
// After a tls handler the addresses are those of the TLS connection the
// edge terminated.
//
// The version is the handler's own, else the app port's
// proxy_proto_options, else v1 (text), as on Fly.io.
//
//	layer4 {
//		:5000 {
//			route {
//				proxy_proto
//				fly_proxy
//			}
//		}
//	}
type ProxyProto struct {
	// PROXY protocol version: "v1" (text) or "v2" (binary).
	// Default: the app port's proxy_proto_options.version, else v1
	Version string `json:"version,omitempty"`

	version byte
	app     *routing.App
}

// CaddyModule returns the Caddy module information.
func (*ProxyProto) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.proxy_proto",
		New: func() caddy.Module { return new(ProxyProto) },
	}
}

// Provision parses the version and finds the fly app.
func (p *ProxyProto) Provision(ctx caddy.Context) error {
	v, err := routing.ProxyProtoVersion(p.Version)
	if err != nil {
		return fmt.Errorf("version: %w", err)
	}
	p.version = v
	app, err := routing.FromContext(ctx)
	if err != nil {
		return err
	}
	p.app = app
	return nil
}

// Handle prepares the header and passes the connection on.
func (p *ProxyProto) Handle(cx *layer4.Connection, next layer4.Handler) error {
	v := p.version
	if v == 0 {
		v = 1
		if rt, err := p.app.RouteForConn(cx); err == nil {
			v = rt.ProxyProtoVersion
		}
	}
	b, err := proxyproto.HeaderProxyFromAddrs(v, cx.RemoteAddr(), cx.LocalAddr()).Format()
	if err != nil {
		return fmt.Errorf("formatting PROXY header: %w", err)
	}
	SetUpstreamPreamble(cx, b)
	routing.MarkHandled(cx, routing.HandlerProxyProto)
	return next.Handle(cx)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	proxy_proto [v1|v2]
func (p *ProxyProto) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume handler name
	if d.NextArg() {
		p.Version = d.Val()
		if _, err := routing.ProxyProtoVersion(p.Version); err != nil {
			return d.Errf("proxy_proto: %v", err)
		}
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("unrecognized proxy_proto option '%s'", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*ProxyProto)(nil)
	_ layer4.NextHandler    = (*ProxyProto)(nil)
	_ caddyfile.Unmarshaler = (*ProxyProto)(nil)
)
