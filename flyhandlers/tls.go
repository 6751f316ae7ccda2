package flyhandlers

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/flyedge/caddy-flyedge/routing"
)

func init() {
	caddy.RegisterModule(new(TLS))
}

// TLS is Fly.io's tls handler for layer 4 services: it terminates TLS
// with certificates from Caddy's tls app (the same automation as any
// site) and passes the plaintext connection on, typically to fly_proxy.
// It is an intermediary handler.
//
// The app is found by routing.App.Resolve (by the address the client
// connected to and its server name, SNI); a connection for no app fails
// the handshake (default deny). The app
// port's tls_options decide the handshake:
//
//   - alpn: the protocols offered; default h2, http/1.1. When the client
//     picks h2, the app receives the HTTP/2 frames in cleartext (h2c), as
//     Fly.io forwards them.
//
//   - versions: TLSv1.2 and/or TLSv1.3; default both.
//
//   - default_self_signed: a client without SNI, or with a name the edge
//     has no certificate for, gets a self-signed certificate instead of a
//     failed handshake.
//
// For example:
//
//	layer4 {
//		:5000 {
//			route {
//				fly_tls
//				fly_proxy
//			}
//		}
//	}
type TLS struct {
	// How long the client may take to complete the handshake.
	// Default: 10s
	HandshakeTimeout caddy.Duration `json:"handshake_timeout,omitempty"`

	app        *routing.App
	policy     *caddytls.ConnectionPolicy
	selfSigned *tls.Certificate
	logger     *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*TLS) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.fly_tls",
		New: func() caddy.Module { return new(TLS) },
	}
}

// Provision sets up the certificate source and the self-signed fallback.
func (t *TLS) Provision(ctx caddy.Context) error {
	t.logger = ctx.Logger()
	if t.HandshakeTimeout == 0 {
		t.HandshakeTimeout = caddy.Duration(10 * time.Second)
	}
	app, err := routing.FromContext(ctx)
	if err != nil {
		return err
	}
	t.app = app
	t.policy = new(caddytls.ConnectionPolicy)
	if err := (caddytls.ConnectionPolicies{t.policy}).Provision(ctx); err != nil {
		return fmt.Errorf("setting up TLS: %w", err)
	}
	cert, err := SelfSignedCertificate()
	if err != nil {
		return fmt.Errorf("making the self-signed certificate: %w", err)
	}
	t.selfSigned = cert
	return nil
}

// Validate checks the options.
func (t *TLS) Validate() error {
	if t.HandshakeTimeout < 0 {
		return errors.New("handshake_timeout must not be negative")
	}
	return nil
}

// Handle terminates TLS and passes the plaintext connection on.
func (t *TLS) Handle(cx *layer4.Connection, next layer4.Handler) error {
	var rt *routing.Route
	cfg := &tls.Config{
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			var err error
			rt, err = t.app.Resolve(cx.LocalAddr(), hello.ServerName)
			if err != nil {
				return nil, err
			}
			return t.configFor(rt), nil
		},
	}
	tlsConn := tls.Server(cx, cfg)
	if err := cx.SetDeadline(time.Now().Add(time.Duration(t.HandshakeTimeout))); err != nil {
		return err
	}
	if err := tlsConn.Handshake(); err != nil {
		if c := t.logger.Check(zapcore.DebugLevel, "TLS handshake failed"); c != nil {
			c.Write(zap.String("remote", cx.RemoteAddr().String()), zap.Error(err))
		}
		return err
	}
	if err := cx.SetDeadline(time.Time{}); err != nil {
		return err
	}
	routing.SetConnRoute(cx, rt)
	routing.MarkHandled(cx, routing.HandlerTLS)
	if c := t.logger.Check(zapcore.DebugLevel, "terminated TLS"); c != nil {
		st := tlsConn.ConnectionState()
		c.Write(zap.String("app", rt.App), zap.String("hostname", st.ServerName), zap.String("alpn", st.NegotiatedProtocol))
	}
	return next.Handle(cx.Wrap(tlsConn))
}

// ACMETLS1 is the ALPN protocol of ACME's TLS-ALPN-01 challenge, which
// Caddy's connection policies offer.
const ACMETLS1 = "acme-tls/1"

// configFor returns the server config for the route's port options.
func (t *TLS) configFor(rt *routing.Route) *tls.Config {
	cfg := t.policy.TLSConfig.Clone()
	cfg.NextProtos = []string{"h2", "http/1.1"}
	if slices.Contains(t.policy.TLSConfig.NextProtos, ACMETLS1) {
		cfg.NextProtos = append(cfg.NextProtos, ACMETLS1) // TLS-ALPN challenges
	}
	cfg.MinVersion, cfg.MaxVersion = rt.TLSMinVersion, rt.TLSMaxVersion
	ApplyTLSOptions(cfg, t.policy.TLSConfig.NextProtos, rt, t.selfSigned)
	return cfg
}

// ApplyTLSOptions sets the route's port tls_options on cfg, a config of
// its own: alpn replaces the protocols offered (keeping ACME's
// TLS-ALPN-01 protocol when the connection policy, whose protocols are
// policyProtos, offers it, so the app's certificates can still be
// obtained that way); versions bound the TLS versions;
// default_self_signed answers with selfSigned when the edge has no
// certificate for the client's server name, or the client sent none.
func ApplyTLSOptions(cfg *tls.Config, policyProtos []string, rt *routing.Route, selfSigned *tls.Certificate) {
	opts := rt.Port.TLSOptions
	if opts == nil {
		return
	}
	if opts.ALPN != nil {
		cfg.NextProtos = slices.Clone(opts.ALPN)
		if slices.Contains(policyProtos, ACMETLS1) && !slices.Contains(cfg.NextProtos, ACMETLS1) {
			cfg.NextProtos = append(cfg.NextProtos, ACMETLS1)
		}
	}
	if len(opts.Versions) > 0 {
		cfg.MinVersion, cfg.MaxVersion = rt.TLSMinVersion, rt.TLSMaxVersion
	}
	if opts.DefaultSelfSigned {
		getCert := cfg.GetCertificate
		cfg.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if hello.ServerName != "" && getCert != nil {
				if cert, err := getCert(hello); err == nil && cert != nil {
					return cert, nil
				}
			}
			return selfSigned, nil
		}
	}
}

// SelfSignedCertificate makes the certificate default_self_signed serves.
func SelfSignedCertificate() (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "flyedge self-signed"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// WithDefaultServerName makes a TLS config answer a client that sent no
// server name with the certificate of the route's app
// (<app>.<base_domain>), as a client that connects by address expects.
func WithDefaultServerName(cfg *tls.Config, hello *tls.ClientHelloInfo, rt *routing.Route) {
	if hello.ServerName != "" || cfg.GetCertificate == nil {
		return
	}
	getCert, name := cfg.GetCertificate, rt.Hostname
	cfg.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		named := *h
		named.ServerName = name
		return getCert(&named)
	}
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	fly_tls {
//		handshake_timeout <duration>
//	}
func (t *TLS) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "handshake_timeout":
			if t.HandshakeTimeout != 0 {
				return d.Err("handshake_timeout already specified")
			}
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("handshake_timeout %q: %v", v, err)
			}
			t.HandshakeTimeout = caddy.Duration(dur)
		default:
			return d.Errf("unrecognized fly_tls option '%s'", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*TLS)(nil)
	_ caddy.Validator       = (*TLS)(nil)
	_ layer4.NextHandler    = (*TLS)(nil)
	_ caddyfile.Unmarshaler = (*TLS)(nil)
)
