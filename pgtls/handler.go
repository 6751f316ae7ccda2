// Package pgtls is the pg_tls handler of flyedge's data path: a layer 4
// handler that runs after routing resolved the app (by address and TLS
// server name), terminates PostgreSQL's TLS (SSLRequest or direct TLS)
// and hands the plaintext session to fly_proxy; it also routes
// CancelRequests to the machine of their session, through that
// session's app only and within a deadline.
package pgtls

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/flyhandlers"
	"github.com/flyedge/caddy-flyedge/routing"
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Handler terminates PostgreSQL TLS with Caddy-managed certificates, so an
// app's PostgreSQL server, which speaks plaintext on its machine, is
// reachable over TLS through the edge (Fly.io's pg_tls handler). It is an
// intermediary layer4 handler, followed by fly_proxy:
//
//   - SSLRequest: answers 'S', completes the TLS handshake with
//     certificates from Caddy's tls app, and passes the decrypted stream
//     on: the machine receives an ordinary plaintext StartupMessage.
//   - Direct TLS (PostgreSQL 17 sslnegotiation=direct): a TLS ClientHello
//     as the first bytes is accepted when it offers ALPN "postgresql", and
//     refused otherwise, as PostgreSQL does.
//   - GSSENCRequest: answered 'N'; the client may go on with SSLRequest.
//   - A plaintext StartupMessage gets a FATAL ErrorResponse (SQLSTATE
//     28000) saying TLS is required, unless allow_plaintext is set.
//   - CancelRequest (plaintext or inside TLS): forwarded to the machine
//     that serves the session, found by the key the server sent in
//     BackendKeyData, when the cancel reaches the session's app (see
//     Resolve; a plaintext cancel, which names no server, stands for the
//     session's server name). The edge waits at most cancel_timeout for
//     the machine to take it, then closes both connections.
//   - No machine reachable: a FATAL ErrorResponse (57P03) naming the app.
//     Oversized (over PostgreSQL's 10,000 bytes) or malformed startup
//     packets: a FATAL ErrorResponse (08P01). Clients that do not finish
//     the handshake within handshake_timeout are dropped.
//
// The app is found by routing.App.Resolve: by the address the client
// connected to and the TLS server name.
//
//	layer4 {
//		:5432 {
//			route {
//				pg_tls
//				fly_proxy
//			}
//		}
//	}
type Handler struct {
	// How long a client may take from connecting to sending its
	// StartupMessage (TLS handshake included).
	// Default: 10s
	HandshakeTimeout caddy.Duration `json:"handshake_timeout,omitempty"`

	// Let clients connect without TLS (sslmode=disable).
	// Default: false
	AllowPlaintext bool `json:"allow_plaintext,omitempty"`

	// TLS versions accepted from clients: "TLSv1.2", "TLSv1.3". A
	// connection policy's protocols may say the same; setting both is an
	// error.
	// Default: what the connection policies say (Caddy: TLS 1.2 and 1.3)
	TLSVersions []string `json:"tls_versions,omitempty"`

	// Caddy TLS connection policies (certificate selection, client
	// authentication, ...); the first that matches the ClientHello
	// applies. ALPN is decided by the handler.
	// Default: one policy with Caddy's defaults
	ConnectionPolicies caddytls.ConnectionPolicies `json:"connection_policies,omitempty"`

	// Speak TLS to the machine too (SSLRequest, then a TLS handshake).
	UpstreamTLS *UpstreamTLS `json:"upstream_tls,omitempty"`

	// How long forwarding a CancelRequest to a machine may take, from
	// dialing to the machine closing the connection; also how long the
	// machine may take to negotiate upstream_tls.
	// Default: 5s
	CancelTimeout caddy.Duration `json:"cancel_timeout,omitempty"`

	minVersion, maxVersion uint16
	base                   *tls.Config // from the connection policies, built once
	app                    *routing.App
	logger                 *zap.Logger
}

// UpstreamTLS configures TLS between the edge and the machine.
type UpstreamTLS struct {
	// Server name to verify the machine's certificate against.
	// Default: the machine's address
	ServerName string `json:"server_name,omitempty"`

	// Do not verify the machine's certificate (it is still encrypted).
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.pg_tls",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up TLS and finds the fly app.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.HandshakeTimeout == 0 {
		h.HandshakeTimeout = caddy.Duration(10 * time.Second)
	}
	if h.CancelTimeout == 0 {
		h.CancelTimeout = caddy.Duration(5 * time.Second)
	}
	if len(h.ConnectionPolicies) == 0 {
		h.ConnectionPolicies = caddytls.ConnectionPolicies{new(caddytls.ConnectionPolicy)}
	}
	if len(h.TLSVersions) > 0 {
		var err error
		if h.minVersion, h.maxVersion, err = routing.TLSVersionRange(h.TLSVersions); err != nil {
			return fmt.Errorf("tls_versions: %w", err)
		}
		for i, cp := range h.ConnectionPolicies {
			if cp.ProtocolMin != "" || cp.ProtocolMax != "" {
				return fmt.Errorf("tls_versions: connection_policies[%d] sets protocols too; set the versions in one place", i)
			}
		}
	}
	if err := h.ConnectionPolicies.Provision(ctx); err != nil {
		return fmt.Errorf("connection_policies: %w", err)
	}
	h.base = h.ConnectionPolicies.TLSConfig(ctx)
	app, err := routing.FromContext(ctx)
	if err != nil {
		return err
	}
	h.app = app
	return nil
}

// Validate checks the options.
func (h *Handler) Validate() error {
	if h.HandshakeTimeout < 0 || h.CancelTimeout < 0 {
		return errors.New("handshake_timeout and cancel_timeout must not be negative")
	}
	return nil
}

// Handle negotiates the startup phase and passes the session on.
func (h *Handler) Handle(cx *layer4.Connection, next layer4.Handler) error {
	if err := cx.SetDeadline(time.Now().Add(time.Duration(h.HandshakeTimeout))); err != nil {
		return err
	}
	var first [1]byte
	if _, err := io.ReadFull(cx, first[:]); err != nil {
		return nil // gone before saying anything
	}
	if first[0] == 0x16 { // a TLS record: direct TLS
		tc, rt, err := h.handshake(&prefixConn{Conn: cx, prefix: first[:]}, true)
		if err != nil {
			return nil
		}
		return h.session(cx, tc, rt, next)
	}
	hdr := first[:]
	for range 3 { // GSSENCRequest, then SSLRequest, then the startup
		msg, err := readFirstMessage(cx, hdr)
		hdr = nil
		if err != nil {
			return h.refuse(cx, err)
		}
		switch msg.kind {
		case kindGSSENCRequest:
			if _, err := cx.Write([]byte{'N'}); err != nil {
				return nil
			}
		case kindCancel:
			return h.cancel(cx.LocalAddr(), "", msg)
		case kindSSLRequest:
			if _, err := cx.Write([]byte{'S'}); err != nil {
				return nil
			}
			tc, rt, err := h.handshake(cx, false)
			if err != nil {
				return nil
			}
			return h.session(cx, tc, rt, next)
		case kindStartup:
			if !h.AllowPlaintext {
				return writeError(cx, "28000", "TLS is required: connect with sslmode=require (or stricter)")
			}
			rt, err := h.app.Resolve(cx.LocalAddr(), "")
			if err != nil {
				return writeError(cx, "08004", "PA01: no app serves this address")
			}
			return h.proceed(cx, cx, rt, "", msg, next)
		}
	}
	return writeError(cx, "08P01", "unexpected startup sequence")
}

// session reads the first message inside TLS and proceeds with it.
func (h *Handler) session(cx *layer4.Connection, tc *tls.Conn, rt *routing.Route, next layer4.Handler) error {
	msg, err := readFirstMessage(tc, nil)
	if err != nil {
		return h.refuse(tc, err)
	}
	name := tc.ConnectionState().ServerName
	switch msg.kind {
	case kindCancel:
		return h.cancel(cx.LocalAddr(), name, msg)
	case kindStartup:
		return h.proceed(cx, tc, rt, name, msg, next)
	}
	return writeError(tc, "08P01", "unexpected SSL or GSS request inside TLS")
}

// proceed passes the session to the next handler (fly_proxy), which sends
// the startup message to the machine and relays; name is the TLS server
// name of the session ("" for none), which its cancel key remembers.
func (h *Handler) proceed(cx *layer4.Connection, client net.Conn, rt *routing.Route, name string, startup firstMessage, next layer4.Handler) error {
	if err := cx.SetDeadline(time.Time{}); err != nil {
		return err
	}
	out := cx
	if client != net.Conn(cx) {
		out = cx.Wrap(client)
	}
	routing.SetConnRoute(out, rt)
	routing.MarkHandled(out, routing.HandlerPGTLS)
	flyhandlers.SetUpstreamWrapper(out, func(up net.Conn) (net.Conn, error) {
		if h.UpstreamTLS != nil {
			var err error
			if up, err = h.upstreamTLS(up); err != nil {
				return nil, err
			}
		}
		if _, err := up.Write(startup.raw); err != nil {
			return nil, err
		}
		return &keySniffer{Conn: up, session: session{machine: up.RemoteAddr().String(), app: rt.App, name: name}}, nil
	})
	err := next.Handle(out)
	if errors.Is(err, routing.ErrAtHardLimit) {
		return writeError(client, "53300", fmt.Sprintf("PR05: every machine of app %q is at its concurrency hard limit", rt.App))
	}
	if errors.Is(err, routing.ErrNoMachine) {
		return writeError(client, "57P03", fmt.Sprintf("PC01: no machine of app %q is reachable", rt.App))
	}
	return err
}

// refuse answers a bad startup packet with an ErrorResponse.
func (h *Handler) refuse(c net.Conn, err error) error {
	if errors.Is(err, errBadLength) || errors.Is(err, errBadProtocol) || errors.Is(err, errBadPacket) {
		return writeError(c, "08P01", err.Error())
	}
	return nil // the client went away or was too slow: just close
}

// writeError sends a FATAL ErrorResponse, which psql and pgx print, and
// ends the connection so that the client reads it: the edge half-closes
// and discards what the client still sends for a moment, as closing with
// unread bytes would reset the connection and lose the message.
func writeError(c net.Conn, code, msg string) error {
	b, err := (&pgproto3.ErrorResponse{Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: msg}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := c.Write(b); err != nil {
		return nil
	}
	flyhandlers.CloseWrite(c)
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.CopyN(io.Discard, c, 64<<10)
	return nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	pg_tls {
//		handshake_timeout <duration>
//		allow_plaintext
//		tls_versions <TLSv1.2|TLSv1.3...>
//		connection_policy {
//			<Caddy TLS connection policy options>
//		}
//		upstream_tls [insecure_skip_verify] [server_name <name>]
//		cancel_timeout <duration>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "handshake_timeout":
			if err := durationOption(d, &h.HandshakeTimeout); err != nil {
				return err
			}
		case "allow_plaintext":
			if d.NextArg() {
				return d.ArgErr()
			}
			if h.AllowPlaintext {
				return d.Err("allow_plaintext already specified")
			}
			h.AllowPlaintext = true
		case "tls_versions":
			if h.TLSVersions != nil {
				return d.Err("tls_versions already specified")
			}
			h.TLSVersions = d.RemainingArgs()
			if len(h.TLSVersions) == 0 {
				return d.ArgErr()
			}
		case "connection_policy":
			cp := new(caddytls.ConnectionPolicy)
			if err := cp.UnmarshalCaddyfile(d.NewFromNextSegment()); err != nil {
				return err
			}
			h.ConnectionPolicies = append(h.ConnectionPolicies, cp)
		case "cancel_timeout":
			if err := durationOption(d, &h.CancelTimeout); err != nil {
				return err
			}
		case "upstream_tls":
			if h.UpstreamTLS != nil {
				return d.Err("upstream_tls already specified")
			}
			h.UpstreamTLS = new(UpstreamTLS)
			for d.NextArg() {
				switch d.Val() {
				case "insecure_skip_verify":
					h.UpstreamTLS.InsecureSkipVerify = true
				case "server_name":
					if !d.NextArg() {
						return d.ArgErr()
					}
					h.UpstreamTLS.ServerName = d.Val()
				default:
					return d.Errf("unrecognized upstream_tls option '%s'", d.Val())
				}
			}
		default:
			return d.Errf("unrecognized pg_tls option '%s'", opt)
		}
	}
	return nil
}

// durationOption parses the duration argument of the option d is on
// into dst, refusing a second occurrence.
func durationOption(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	opt := d.Val()
	if *dst != 0 {
		return d.Errf("%s already specified", opt)
	}
	var v string
	if !d.AllArgs(&v) {
		return d.ArgErr()
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return d.Errf("%s %q: %v", opt, v, err)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Handler)(nil)
	_ caddy.Validator       = (*Handler)(nil)
	_ layer4.NextHandler    = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*Handler)(nil)
)
