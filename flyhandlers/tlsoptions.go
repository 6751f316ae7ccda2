package flyhandlers

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/routing"
)

func init() {
	caddy.RegisterModule(new(TLSOptionsWrapper))
}

// TLSOptionsWrapper (`caddy.listeners.fly_tls_options`) applies the apps'
// tls_options to the TLS of an HTTP server, that is to ports whose
// handlers are ["tls", "http"]: ALPN, TLS versions and the self-signed
// fallback, per app, as the fly_tls handler does on layer 4 ports.
//
// It goes after TLS among the server's listener wrappers: alone, or after
// the tls placeholder when a wrapper such as fly_layer4 comes before TLS.
// Every handshake first picks the server's TLS connection policy as Caddy
// would; when the connection belongs to an app (by the address it
// arrived on and its server name, as routing.App.RouteForServerName
// says) whose port sets tls_options, the options are applied on top of
// that policy's config. Every other connection gets the policy's config
// unchanged. HTTP/3 does not pass through listener wrappers, so it does
// not see the options (Fly.io's proxy does not speak HTTP/3).
//
//	servers :443 {
//		protocols h1 h2
//		listener_wrappers {
//			fly_tls_options
//		}
//	}
type TLSOptionsWrapper struct {
	ctx        caddy.Context
	app        *routing.App
	selfSigned *tls.Certificate
	logger     *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*TLSOptionsWrapper) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.listeners.fly_tls_options",
		New: func() caddy.Module { return new(TLSOptionsWrapper) },
	}
}

// Provision finds the fly app and makes the self-signed certificate.
func (w *TLSOptionsWrapper) Provision(ctx caddy.Context) error {
	w.ctx = ctx
	w.logger = ctx.Logger()
	app, err := routing.FromContext(ctx)
	if err != nil {
		return err
	}
	w.app = app
	cert, err := selfSignedCertificate()
	if err != nil {
		return fmt.Errorf("making the self-signed certificate: %w", err)
	}
	w.selfSigned = cert
	return nil
}

// WrapListener implements caddy.ListenerWrapper. The HTTP server calls
// it when it starts, after every app has been provisioned, so the
// server's connection policies can be looked up here.
func (w *TLSOptionsWrapper) WrapListener(ln net.Listener) net.Listener {
	srv, err := w.server(ln.Addr())
	if err != nil {
		w.logger.Error("tls_options will not apply on this listener", zap.String("address", ln.Addr().String()), zap.Error(err))
		return ln
	}
	if len(srv.TLSConnPolicies) == 0 {
		return ln // a listener without TLS
	}
	if slices.Contains(srv.Protocols, "h3") {
		w.logger.Warn("this server also serves HTTP/3, which does not pass through listener wrappers: tls_options do not apply to it; set the server's protocols to h1 h2",
			zap.String("address", ln.Addr().String()))
	}
	base := srv.TLSConnPolicies.TLSConfig(w.ctx)
	cfg := base.Clone()
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		pc, err := base.GetConfigForClient(hello)
		if err != nil || pc == nil {
			return pc, err
		}
		rt, rerr := w.app.RouteForServerName(hello.ServerName, hello.Conn.LocalAddr())
		if rerr != nil || rt.Port.TLSOptions == nil {
			return pc, nil
		}
		own := pc.Clone()
		applyTLSOptions(own, pc.NextProtos, rt, w.selfSigned)
		return own, nil
	}
	l := &tlsOptionsListener{Listener: ln, cfg: cfg, logger: w.logger}
	l.wantTLS = w.servesTLS(ln.Addr())
	return l
}

// servesTLS reports whether the HTTP server terminates TLS on addr (a
// server with TLS policies does, except on the HTTP port).
func (w *TLSOptionsWrapper) servesTLS(addr net.Addr) bool {
	httpApp, err := w.ctx.App("http")
	if err != nil {
		return false
	}
	port := httpApp.(*caddyhttp.App).HTTPPort
	if port == 0 {
		port = caddyhttp.DefaultHTTPPort
	}
	ap, err := netip.ParseAddrPort(addr.String())
	return err != nil || int(ap.Port()) != port
}

// server returns the HTTP server that listens on addr.
func (w *TLSOptionsWrapper) server(addr net.Addr) (*caddyhttp.Server, error) {
	httpApp, err := w.ctx.App("http")
	if err != nil {
		return nil, err
	}
	var found *caddyhttp.Server
	exact := false
	for _, srv := range httpApp.(*caddyhttp.App).Servers {
		for _, la := range srv.Listen {
			na, err := caddy.ParseNetworkAddress(la)
			if err != nil {
				continue
			}
			if ok, isExact := listensOn(na, addr); ok && (found == nil || isExact && !exact) {
				found, exact = srv, isExact
			}
		}
	}
	if found == nil {
		return nil, fmt.Errorf("no HTTP server listens on %s", addr)
	}
	return found, nil
}

// listensOn reports whether a server's listen address covers the
// listener address addr, and whether it names addr's host exactly.
func listensOn(na caddy.NetworkAddress, addr net.Addr) (ok, exact bool) {
	if na.IsUnixNetwork() || na.IsFdNetwork() {
		return na.Host == addr.String(), true
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return false, false
	}
	port := uint(ap.Port())
	if port < na.StartPort || port > max(na.EndPort, na.StartPort) {
		return false, false
	}
	if na.Host == "" {
		return true, false
	}
	ip, err := netip.ParseAddr(na.Host)
	if err != nil {
		// a host name: Caddy listens on what it resolves to
		return true, false
	}
	return ip.Unmap() == ap.Addr().Unmap(), true
}

type tlsOptionsListener struct {
	net.Listener
	cfg       *tls.Config
	wantTLS   bool // the server terminates TLS on this listener
	logger    *zap.Logger
	misplaced sync.Once
}

// Accept takes the connection the TLS listener made, before any byte of
// it has been read (the handshake happens on first use), and gives the
// HTTP server a TLS connection over the same socket with the config
// that applies the apps' tls_options.
func (l *tlsOptionsListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*tls.Conn)
	if !ok {
		if l.wantTLS {
			l.misplaced.Do(func() {
				l.logger.Error("fly_tls_options must come after TLS among the listener wrappers; tls_options do not apply",
					zap.String("address", l.Addr().String()))
			})
		}
		return c, nil
	}
	return tls.Server(tc.NetConn(), l.cfg), nil
}

// UnmarshalCaddyfile sets up the wrapper from Caddyfile tokens. Syntax:
//
//	fly_tls_options
func (w *TLSOptionsWrapper) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // wrapper name
	if d.NextArg() || d.NextBlock(0) {
		return d.ArgErr()
	}
	return nil
}

// Interface guards
var (
	_ caddy.ListenerWrapper = (*TLSOptionsWrapper)(nil)
	_ caddy.Provisioner     = (*TLSOptionsWrapper)(nil)
	_ caddyfile.Unmarshaler = (*TLSOptionsWrapper)(nil)
)
