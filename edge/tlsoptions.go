package edge

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/flyhandlers"
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
// arrived on and its server name, as routing.App.Resolve says)
// whose port runs http and sets tls_options, the options are applied on
// top of that policy's config, offering only ALPN protocols the server
// speaks. Every other connection gets the policy's config unchanged.
// HTTP/3 does not pass through listener wrappers, so it does not see the
// options (Fly.io's proxy does not speak HTTP/3).
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

	mu  sync.Mutex
	cfg *tls.Config // the server's, made by the first listener
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
	cert, err := flyhandlers.SelfSignedCertificate()
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
	httpApp, err := w.ctx.AppIfConfigured("http")
	if err != nil {
		w.logger.Error("tls_options will not apply on this listener", zap.String("address", ln.Addr().String()), zap.Error(err))
		return ln
	}
	srv, err := wrappedServer(httpApp.(*caddyhttp.App), ln.Addr())
	if err != nil {
		w.logger.Error("tls_options will not apply on this listener", zap.String("address", ln.Addr().String()), zap.Error(err))
		return ln
	}
	if len(srv.TLSConnPolicies) == 0 {
		return ln // a server without TLS
	}
	if servesH3(srv) {
		w.logger.Warn("this server also serves HTTP/3, which does not pass through listener wrappers: tls_options do not apply to it; set the server's protocols to h1 h2",
			zap.String("address", ln.Addr().String()))
	}
	return &tlsOptionsListener{
		Listener: ln,
		cfg:      w.serverConfig(srv),
		wantTLS:  servesTLS(httpApp.(*caddyhttp.App), ln.Addr()),
		logger:   w.logger,
	}
}

// serverConfig returns the TLS config of the server's listeners: one per
// server, as Caddy has, so that session tickets resume across them.
func (w *TLSOptionsWrapper) serverConfig(srv *caddyhttp.Server) *tls.Config {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cfg != nil {
		return w.cfg
	}
	base := srv.TLSConnPolicies.TLSConfig(w.ctx)
	cfg := base.Clone()
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		pc, err := base.GetConfigForClient(hello)
		if err != nil || pc == nil {
			return pc, err
		}
		rt, rerr := w.app.Resolve(hello.Conn.LocalAddr(), hello.ServerName)
		if rerr != nil || rt.Port.TLSOptions == nil || !rt.Handlers.ServedByHTTP() {
			return pc, nil
		}
		own := pc.Clone()
		flyhandlers.ApplyTLSOptions(own, pc.NextProtos, rt, w.selfSigned)
		own.NextProtos = servable(own.NextProtos, pc.NextProtos)
		return own, nil
	}
	w.cfg = cfg
	return cfg
}

// servable returns the protocols of offered that the server speaks
// (those of its connection policy), in offered's order; when there are
// none, the server's own.
func servable(offered, speaks []string) []string {
	var out []string
	for _, p := range offered {
		if slices.Contains(speaks, p) {
			out = append(out, p)
		}
	}
	if len(out) == 0 || len(out) == 1 && out[0] == flyhandlers.ACMETLS1 {
		return speaks
	}
	return out
}

// servesH3 reports whether the server serves HTTP/3 on any address.
func servesH3(srv *caddyhttp.Server) bool {
	if slices.Contains(srv.Protocols, "h3") {
		return true
	}
	for _, ps := range srv.ListenProtocols {
		if slices.Contains(ps, "h3") {
			return true
		}
	}
	return false
}

// servesTLS reports whether the HTTP app terminates TLS on addr, a
// listener of a server with TLS policies: everywhere but on the HTTP port.
func servesTLS(httpApp *caddyhttp.App, addr net.Addr) bool {
	port := httpApp.HTTPPort
	if port == 0 {
		port = caddyhttp.DefaultHTTPPort
	}
	ap, err := netip.ParseAddrPort(addr.String())
	return err != nil || int(ap.Port()) != port
}

// wrappedServer returns the HTTP server of a listener on addr: the one
// whose listen address names addr most closely (an IP over a host name).
// Caddy refuses a listen address that two servers share, so only two
// host names that resolve to one address can leave it undecided, which is
// an error.
func wrappedServer(httpApp *caddyhttp.App, addr net.Addr) (*caddyhttp.Server, error) {
	var found *caddyhttp.Server
	best, tie := 0, false
	for _, srv := range httpApp.Servers {
		for _, la := range srv.Listen {
			na, err := caddy.ParseNetworkAddress(la)
			if err != nil {
				continue
			}
			rank := listensOn(na, addr)
			switch {
			case rank > best:
				found, best, tie = srv, rank, false
			case rank == best && rank > 0 && srv != found:
				tie = true
			}
		}
	}
	switch {
	case found == nil:
		return nil, fmt.Errorf("no HTTP server listens on %s", addr)
	case tie:
		return nil, fmt.Errorf("several HTTP servers listen on %s", addr)
	}
	return found, nil
}

// listensOn tells how closely a server's listen address na names the
// listener address addr: 0 not at all, 1 by a host name (Caddy listens
// on the address it resolves to), 2 by its IP, every address or socket
// path.
func listensOn(na caddy.NetworkAddress, addr net.Addr) int {
	if na.IsUnixNetwork() {
		path, _, _ := strings.Cut(na.Host, "|") // unix//path|0222 sets the file mode
		if path == addr.String() {
			return 2
		}
		return 0
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return 0
	}
	port := uint(ap.Port())
	if port < na.StartPort || port > max(na.EndPort, na.StartPort) {
		return 0
	}
	lnIP := ap.Addr().Unmap()
	if na.Host == "" {
		if lnIP.IsUnspecified() {
			return 2
		}
		return 0
	}
	ip, err := netip.ParseAddr(na.Host)
	if err != nil {
		if lnIP.IsUnspecified() {
			return 0
		}
		return 1
	}
	if ip.Unmap() == lnIP {
		return 2
	}
	return 0
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
