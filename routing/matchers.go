package routing

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/mholt/caddy-l4/layer4"
	"github.com/mholt/caddy-l4/modules/l4tls"
)

func init() {
	caddy.RegisterModule(new(MatchHTTP))
	caddy.RegisterModule(new(MatchL4))
}

// MatchHTTP (`http.matchers.fly_app`) matches requests that reach an
// app: by the address the connection arrived on (and, on a shared
// address, the Host), with a service on the edge port. The app's name is
// then in {http.vars.fly.app}, and later flyedge handlers of the request
// use the route the matcher found. A list of app names narrows the match
// to those apps.
//
//	@app fly_app [<app>...]
type MatchHTTP struct {
	// Only these apps; none means any app.
	Apps []string `json:"apps,omitempty"`

	fly *App
}

// provisionFly finds the fly app (making sure the fly_ips app, which
// feeds it addresses, host names and machines, runs too: it is loaded by
// its module ID, as routing imports no other flyedge package) and checks
// that the matcher's app names (config field field) are apps of the fly
// config.
func provisionFly(ctx caddy.Context, field string, names []string) (*App, error) {
	fly, err := FromContext(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := ctx.App("fly_ips"); err != nil {
		return nil, fmt.Errorf("loading the fly_ips app: %w", err)
	}
	for _, name := range names {
		if !fly.HasApp(name) {
			return nil, fmt.Errorf("%s: %q is not an app of the fly config", field, name)
		}
	}
	return fly, nil
}

// CaddyModule returns the Caddy module information.
func (*MatchHTTP) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.matchers.fly_app",
		New: func() caddy.Module { return new(MatchHTTP) },
	}
}

// Provision finds the fly and fly_ips apps.
func (m *MatchHTTP) Provision(ctx caddy.Context) error {
	fly, err := provisionFly(ctx, "fly_app", m.Apps)
	m.fly = fly
	return err
}

// Match implements caddyhttp.RequestMatcher.
func (m *MatchHTTP) Match(r *http.Request) bool {
	ok, _ := m.MatchWithError(r)
	return ok
}

// MatchWithError implements caddyhttp.RequestMatcherWithError.
func (m *MatchHTTP) MatchWithError(r *http.Request) (bool, error) {
	rt, err := m.fly.RouteForRequest(r)
	if errors.Is(err, ErrMisdirected) {
		return true, nil // whatever its apps: fly_headers answers it with 421
	}
	if err != nil {
		return false, nil
	}
	if rt.Handlers.TerminatesTLS() != (r.TLS != nil) {
		return false, nil // plain HTTP to a tls+http port, or the reverse
	}
	return len(m.Apps) == 0 || slices.Contains(m.Apps, rt.App), nil
}

// UnmarshalCaddyfile sets up the matcher from Caddyfile tokens:
//
//	fly_app [<app>...]
func (m *MatchHTTP) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for d.Next() {
		m.Apps = append(m.Apps, d.RemainingArgs()...)
		if d.NextBlock(0) {
			return d.Err("fly_app takes no block")
		}
	}
	return nil
}

// MatchL4 (`layer4.matchers.fly_app`) matches connections for an app's
// port that is served at layer 4 (its handlers do not include http): a
// connection to a dedicated address of the app (nothing is read from
// it, so server-speaks-first protocols work), or to a shared address
// with a TLS ClientHello whose server name the app answers to. With
// handlers, only ports with exactly that handler list match ("none" for
// pass-through), so each list gets a route with the handlers it needs;
// with apps, only those apps. (The ClientHello is parsed by caddy-l4's tls
// matcher, which also sets {l4.tls.server_name}.) Connections for HTTP
// ports match only when handlers names their list ([tls http]);
// otherwise, as the http server's listener wrapper, caddy-l4 passes them
// on to it.
type MatchL4 struct {
	// Only ports with this handler list; none matches pass-through ports.
	Handlers []string `json:"handlers,omitempty"`

	// Only these apps.
	Apps []string `json:"apps,omitempty"`

	// On a shared address, match a PostgreSQL SSLRequest instead of a TLS
	// ClientHello: the client names the server only in the TLS handshake
	// that follows, which pg_tls runs and resolves. Only with handlers
	// pg_tls.
	SSLRequest bool `json:"ssl_request,omitempty"`

	// Match as the edge's one route does (alone: no handlers, apps or
	// ssl_request): any port whose connections are handled at layer 4
	// first, [tls http] included (its TLS is terminated there), and on a
	// shared address also a PostgreSQL SSLRequest (for pg_tls, which
	// reads the name in the handshake that follows). The ClientHello is
	// read and the route resolved once; the handler set to run is then in
	// the connection's variables (MatchedHandlers), and so is the denial
	// of a connection the edge closes unserved (Denied).
	Edge bool `json:"edge,omitempty"`

	fly      *App
	handlers Handlers       // parsed Handlers
	hello    l4tls.MatchTLS // reads the ClientHello on shared addresses
}

// CaddyModule returns the Caddy module information.
func (*MatchL4) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.matchers.fly_app",
		New: func() caddy.Module { return new(MatchL4) },
	}
}

// Provision finds the fly and fly_ips apps.
func (m *MatchL4) Provision(ctx caddy.Context) error {
	if m.Handlers != nil {
		names := m.Handlers
		if slices.Equal(names, []string{"none"}) {
			names = nil
		}
		hs, err := ParseHandlers(names)
		if err != nil {
			return fmt.Errorf("handlers: %w", err)
		}
		if !hs.AtLayer4() {
			return fmt.Errorf("handlers: %v: plain HTTP ports are served by the HTTP server, not at layer 4", m.Handlers)
		}
		m.handlers = hs
	}
	if m.SSLRequest && (m.Handlers == nil || !m.handlers.SSLRequestFirst()) {
		return fmt.Errorf("ssl_request: only with handlers pg_tls")
	}
	if m.Edge && (m.Handlers != nil || m.Apps != nil || m.SSLRequest) {
		return fmt.Errorf("edge: alone, without handlers, apps or ssl_request")
	}
	fly, err := provisionFly(ctx, "apps", m.Apps)
	m.fly = fly
	if err != nil {
		return err
	}
	return m.hello.Provision(ctx)
}

// Match implements layer4.ConnMatcher.
func (m *MatchL4) Match(cx *layer4.Connection) (bool, error) {
	nameDecides := m.fly.NameDecides(cx.LocalAddr())
	if m.Edge {
		return m.matchEdge(cx, nameDecides)
	}
	if m.SSLRequest {
		if !nameDecides {
			return false, nil // the address decides: the route below does
		}
		var b [8]byte
		if _, err := io.ReadFull(cx, b[:]); err != nil {
			return false, err
		}
		return b == sslRequest, nil
	}
	if nameDecides {
		if ok, err := m.hello.Match(cx); !ok || err != nil {
			return false, err
		}
		name, _ := cx.Replacer().GetString("l4.tls.server_name")
		if name = strings.ToLower(strings.TrimSuffix(name, ".")); name == "" {
			return false, nil
		}
		setServerName(cx, name)
	}
	rt, err := m.fly.RouteForConn(cx)
	if err != nil {
		return false, nil
	}
	if m.Handlers == nil && rt.Handlers.ServedByHTTP() || m.Handlers != nil && rt.Handlers != m.handlers {
		return false, nil
	}
	return len(m.Apps) == 0 || slices.Contains(m.Apps, rt.App), nil
}

// matchEdge matches for the edge's one route (Edge): on a shared
// address, a ClientHello naming an app's layer 4 port, or a PostgreSQL
// SSLRequest (told apart by the first byte, as neither matcher may
// rewind); on other addresses, a port served at layer 4.
//
// It also marks the connections the edge closes unserved (Denied): on an
// address that decides alone (not a shared one), one the resolver denies
// (no app holds the address), before anything is read; on a shared
// address, one that starts as neither TLS, an HTTP/1 request line nor an
// SSLRequest. Until the bytes decide, it asks for more, so a client that
// sends too little is closed at the matching timeout. Anything else it
// does not match goes to the HTTP server: an HTTP request, whose Host
// decides, or a ClientHello naming no app here, which the edge answers
// with an unrecognized_name alert.
func (m *MatchL4) matchEdge(cx *layer4.Connection, nameDecides bool) (bool, error) {
	if nameDecides {
		b := cx.MatchingBytes()
		if len(b) == 0 {
			return false, layer4.ErrConsumedAllPrefetchedBytes
		}
		switch {
		case b[0] == recordTypeHandshake: // TLS, below
		case b[0] == sslRequest[0]:
			var msg [8]byte
			if _, err := io.ReadFull(cx, msg[:]); err != nil {
				return false, err
			}
			if msg != sslRequest && msg != gssencRequest {
				deny(cx, fmt.Errorf("%w: %s: neither a TLS ClientHello, an HTTP request nor a PostgreSQL SSLRequest", ErrDenied, AddrOf(cx.LocalAddr())))
				return false, nil
			}
			cx.SetVar(matchedVarKey, HandlerPGTLS)
			return true, nil
		default:
			isHTTP, err := httpRequestLine(b)
			if err != nil {
				return false, err // more bytes, within the matching timeout
			}
			if !isHTTP {
				deny(cx, fmt.Errorf("%w: %s: neither a TLS ClientHello, an HTTP request nor a PostgreSQL SSLRequest", ErrDenied, AddrOf(cx.LocalAddr())))
			}
			return false, nil // HTTP: the HTTP server, by Host
		}
		if ok, err := m.hello.Match(cx); !ok || err != nil {
			return false, err
		}
		name, _ := cx.Replacer().GetString("l4.tls.server_name")
		if name = strings.ToLower(strings.TrimSuffix(name, ".")); name == "" {
			return false, nil
		}
		setServerName(cx, name)
	}
	rt, err := m.fly.RouteForConn(cx)
	if err != nil {
		if !nameDecides && errors.Is(err, ErrDenied) {
			deny(cx, err) // the address alone decides: nothing to read
		}
		return false, nil
	}
	if !rt.Handlers.AtLayer4() {
		return false, nil
	}
	cx.SetVar(matchedVarKey, rt.Handlers)
	return true, nil
}

// deniedVarKey is the connection variable with the reason the edge's
// fly_app matcher denied a connection.
const deniedVarKey = "fly.denied"

func deny(cx *layer4.Connection, err error) { cx.SetVar(deniedVarKey, err) }

// Denied returns why the edge's fly_app matcher (Edge) denied cx, which
// the edge then closes without an answer, or nil: the resolver denied
// its address (no app holds it, or no app serves its port, without IP
// pools), or, on a shared address, its first bytes are neither TLS, an
// HTTP request line nor a PostgreSQL SSLRequest.
func Denied(cx *layer4.Connection) error {
	err, _ := cx.GetVar(deniedVarKey).(error)
	return err
}

// maxRequestLine is how much of an HTTP request line the edge's matcher
// reads before it hands the connection to the HTTP server (which then
// answers a longer one itself); less than caddy-l4's matching buffer.
const maxRequestLine = 8 << 10

// httpRequestLine tells whether b starts with an HTTP/1 request line
// (method, target, HTTP/ version, end of line; the HTTP/2 preface is one
// too). ErrConsumedAllPrefetchedBytes means that b is the start of one,
// so far, and the line has not ended yet.
func httpRequestLine(b []byte) (bool, error) {
	method := 0
	for method < len(b) && isTokenChar(b[method]) {
		method++
	}
	switch {
	case method == len(b) && method <= 32:
		return false, layer4.ErrConsumedAllPrefetchedBytes
	case method == 0 || method > 32 || b[method] != ' ':
		return false, nil
	}
	end := bytes.IndexByte(b, '\n')
	if end < 0 {
		if len(b) >= maxRequestLine {
			return true, nil // the HTTP server answers a line that long
		}
		return false, layer4.ErrConsumedAllPrefetchedBytes
	}
	line := bytes.TrimSuffix(b[:end], []byte{'\r'})
	sp := bytes.LastIndexByte(line, ' ')
	return sp > method+1 && bytes.HasPrefix(line[sp+1:], []byte("HTTP/")), nil
}

// isTokenChar tells whether c may be in an HTTP method (RFC 9110 tchar).
func isTokenChar(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// recordTypeHandshake is the first byte of a TLS handshake record.
const recordTypeHandshake = 0x16

// matchedVarKey is the connection variable with the handler set the
// edge's fly_app matcher (Edge) found for a connection.
const matchedVarKey = "fly.matched_handlers"

// MatchedHandlers returns the handler set the edge's fly_app matcher
// found for cx, and whether it matched: the set of the port cx's route
// is for, or pg_tls for an SSLRequest (or GSSENCRequest) on a shared
// address, whose route pg_tls resolves.
func MatchedHandlers(cx *layer4.Connection) (Handlers, bool) {
	h, ok := cx.GetVar(matchedVarKey).(Handlers)
	return h, ok
}

// sslRequest is a PostgreSQL SSLRequest message: length 8, code 80877103.
var sslRequest = [8]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}

// gssencRequest is a PostgreSQL GSSENCRequest message (code 80877104),
// which a client may send before its SSLRequest; pg_tls declines it.
var gssencRequest = [8]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30}

// UnmarshalCaddyfile sets up the matcher from Caddyfile tokens:
//
//	fly_app [<app>...] {
//		handlers none|<handler>...
//		ssl_request
//		edge
//	}
func (m *MatchL4) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // matcher name
	m.Apps = append(m.Apps, d.RemainingArgs()...)
	for d.NextBlock(0) {
		switch d.Val() {
		case "handlers":
			if m.Handlers != nil {
				return d.Err("handlers already specified")
			}
			if m.Handlers = d.RemainingArgs(); len(m.Handlers) == 0 {
				return d.ArgErr()
			}
		case "ssl_request":
			if d.NextArg() {
				return d.ArgErr()
			}
			m.SSLRequest = true
		case "edge":
			if d.NextArg() {
				return d.ArgErr()
			}
			m.Edge = true
		default:
			return d.Errf("unrecognized fly_app option '%s'", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddyhttp.RequestMatcherWithError = (*MatchHTTP)(nil)
	_ caddy.Provisioner                 = (*MatchHTTP)(nil)
	_ caddyfile.Unmarshaler             = (*MatchHTTP)(nil)
	_ layer4.ConnMatcher                = (*MatchL4)(nil)
	_ caddy.Provisioner                 = (*MatchL4)(nil)
	_ caddyfile.Unmarshaler             = (*MatchL4)(nil)
)
