package flyhandlers

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/flyedge/caddy-flyedge/routing"
)

func init() {
	caddy.RegisterModule(new(Headers))
}

// Headers is Fly.io's http handler for requests on their way to an app. It
// resolves the app and its service port with routing.App.Resolve (by the
// address and port the request arrived on and its Host), then sets on
// the request:
//
//   - Fly-Client-IP: the client address as the server sees it (the peer,
//     or the client a trusted proxy names; see the server's
//     trusted_proxies)
//   - X-Forwarded-For: from an untrusted peer, the client address alone
//     (the incoming value is dropped); from a trusted proxy, its value as
//     it came (reverse_proxy then appends the peer's address)
//   - X-Forwarded-Proto: http or https; X-Forwarded-SSL: on or off
//   - X-Forwarded-Port: as the client sent it, else the edge port
//   - Fly-Forwarded-Port: the edge port the client connected to, always
//   - Fly-Region: the edge's region
//
// The edge is the authority for Fly-Client-IP, X-Forwarded-Proto,
// X-Forwarded-SSL, Fly-Forwarded-Port and Fly-Region: client values are
// overwritten. Any other incoming Fly-* header from an untrusted peer is
// removed, except the routing requests Fly-Prefer-Region,
// Fly-Prefer-Instance-Id and Fly-Force-Instance-Id.
//
// A request for a host no app answers to, or for a port the app has no
// service on, is answered 404 and never reaches an app (default deny).
// When the `fly` selection policy, or the `fly` transport after machines
// refused the connection, finds no machine for the request, the client
// gets an answer it can read: 404 for a Fly-Force-Instance-Id that is no
// machine of the app, 503 for a machine that cannot take requests.
//
// The app's name is available as {http.vars.fly.app}.
type Headers struct {
	app    *routing.App
	region string
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Headers) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.fly_headers",
		New: func() caddy.Module { return new(Headers) },
	}
}

// Provision finds the fly app.
func (h *Headers) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	app, err := routing.FromContext(ctx)
	if err != nil {
		return err
	}
	h.app = app
	h.region = h.app.EdgeRegion()
	return nil
}

// Canonical forms of the header names, computed once.
var (
	hdrFlyClientIP      = http.CanonicalHeaderKey("Fly-Client-IP")
	hdrFlyForwardedPort = http.CanonicalHeaderKey("Fly-Forwarded-Port")
	hdrFlyRegion        = http.CanonicalHeaderKey("Fly-Region")
	hdrXFF              = http.CanonicalHeaderKey("X-Forwarded-For")
	hdrXFProto          = http.CanonicalHeaderKey("X-Forwarded-Proto")
	hdrXFSSL            = http.CanonicalHeaderKey("X-Forwarded-SSL")
	hdrXFPort           = http.CanonicalHeaderKey("X-Forwarded-Port")
	hdrXFHost           = http.CanonicalHeaderKey("X-Forwarded-Host")
	hdrPreferredUnavail = http.CanonicalHeaderKey(routing.HeaderPreferredUnavailable)
	hdrFlyRequestID     = http.CanonicalHeaderKey("Fly-Request-Id")
	clientFlyHeaders    = map[string]bool{
		http.CanonicalHeaderKey(routing.HeaderForceInstance):  true,
		http.CanonicalHeaderKey(routing.HeaderPreferInstance): true,
		http.CanonicalHeaderKey(routing.HeaderPreferRegion):   true,
		http.CanonicalHeaderKey(routing.HeaderForceRegion):    true,
	}
)

// ServeHTTP sets the Fly headers and passes the request on.
func (h *Headers) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	hdr := r.Header
	id := ""
	if trusted {
		id = hdr.Get(hdrFlyRequestID) // a trusted proxy's ID goes on
	}
	if id == "" {
		id = newRequestID(time.Now(), h.region)
	}
	caddyhttp.SetVar(r.Context(), RequestIDVarKey, id)

	rt, err := h.app.RouteForRequest(r)
	if err != nil {
		code := CodeNoApp
		if errors.Is(err, routing.ErrNoService) {
			code = CodeNoService
		}
		if c := h.logger.Check(zapcore.DebugLevel, "request denied"); c != nil {
			c.Write(zap.String("hostname", r.Host), zap.String("request_id", id), zap.String("code", code.ID), zap.Error(err))
		}
		w.Header().Set(hdrFlyRequestID, id)
		return writeError(w, r, code, err.Error(), id)
	}

	clientIP, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	if !trusted {
		for k := range hdr {
			if len(k) > 4 && k[:4] == "Fly-" && !clientFlyHeaders[k] {
				delete(hdr, k)
			}
		}
		delete(hdr, hdrXFF)
		delete(hdr, hdrXFHost)
	}
	delete(hdr, hdrPreferredUnavail)

	proto, ssl := "http", "off"
	if r.TLS != nil {
		proto, ssl = "https", "on"
	}
	// one allocation for every value; each is its own 1-cap slice, so an
	// append by a later handler copies instead of overwriting a neighbour
	vals := [...]string{clientIP, clientIP, proto, ssl, rt.PortString, rt.PortString, h.region, id}
	v := vals[:]
	hdr[hdrFlyClientIP] = v[0:1:1]
	if !trusted {
		hdr[hdrXFF] = v[1:2:2]
	}
	hdr[hdrXFProto] = v[2:3:3]
	hdr[hdrXFSSL] = v[3:4:4]
	if xp := hdr[hdrXFPort]; len(xp) == 0 || xp[0] == "" {
		hdr[hdrXFPort] = v[4:5:5]
	}
	hdr[hdrFlyForwardedPort] = v[5:6:6]
	hdr[hdrFlyRegion] = v[6:7:7]
	hdr[hdrFlyRequestID] = v[7:8:8]

	fw := &flyResponse{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, rt: rt, id: id}
	if o := rt.Service.HTTPOptions; o != nil {
		fw.resp = o.Response
	}
	err = next.ServeHTTP(fw, r)
	if err == nil || fw.done {
		return err
	}
	code, msg, ok := failure(r, rt, err)
	if !ok {
		return err
	}
	if c := h.logger.Check(zapcore.InfoLevel, "request failed"); c != nil {
		c.Write(zap.String("app", rt.App), zap.String("machine", r.Header.Get(routing.HeaderForceInstance)),
			zap.String("request_id", id), zap.String("code", code.ID), zap.Error(err))
	}
	return writeError(fw, r, code, msg, id)
}

// failure tells which code a failed request gets, and what the client
// reads: the reason the fly selection policy or transport recorded, or
// what the reverse proxy's error says. Errors that are not the edge's
// (a handler's own) are left alone.
func failure(r *http.Request, rt *routing.Route, err error) (Code, string, bool) {
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) {
		return Code{}, "", false
	}
	if outcome, failed := routing.Unroutable(r); failed && (he.StatusCode == http.StatusBadGateway || he.StatusCode == http.StatusServiceUnavailable) {
		switch outcome {
		case routing.ForcedUnknown:
			return CodeForcedUnknown, fmt.Sprintf("%s: %q is not a machine of app %s", routing.HeaderForceInstance, r.Header.Get(routing.HeaderForceInstance), rt.App), true
		case routing.ForcedUnavailable:
			return CodeForcedUnavailable, fmt.Sprintf("%s: machine %s of app %s cannot take requests now", routing.HeaderForceInstance, r.Header.Get(routing.HeaderForceInstance), rt.App), true
		case routing.ForcedRegionUnavailable:
			return CodeForcedRegion, fmt.Sprintf("%s: no machine of app %s in %s can take requests now", routing.HeaderForceRegion, rt.App, r.Header.Get(routing.HeaderForceRegion)), true
		case routing.Refused:
			return CodeRefused, fmt.Sprintf("the machines of app %s refused the connection", rt.App), true
		default:
			return CodeNoMachine, fmt.Sprintf("no machine of app %s can take requests now", rt.App), true
		}
	}
	switch he.StatusCode {
	case http.StatusBadGateway:
		var de reverseproxy.DialError
		if errors.As(err, &de) {
			return CodeRefused, fmt.Sprintf("the machines of app %s refused the connection", rt.App), true
		}
		return CodeIncomplete, fmt.Sprintf("a machine of app %s did not complete the response", rt.App), true
	case http.StatusGatewayTimeout:
		return CodeTimeout, fmt.Sprintf("a machine of app %s did not answer in time", rt.App), true
	case http.StatusServiceUnavailable:
		return CodeNoMachine, fmt.Sprintf("no machine of app %s can take requests now", rt.App), true
	}
	return Code{}, "", false
}

// RequestIDVarKey is the request variable ({http.vars.fly.request_id})
// with the request's Fly-Request-Id.
const RequestIDVarKey = "fly.request_id"

// flyResponse applies the edge's response headers when the response's
// header is written: Fly-Request-Id and the edge's name in Via, unless
// the service's response is pristine, then the service's own header
// changes.
type flyResponse struct {
	caddyhttp.ResponseWriterWrapper
	rt   *routing.Route
	resp *routing.HTTPResponse
	id   string
	done bool // the final header is written
}

func (w *flyResponse) WriteHeader(status int) {
	if !w.done && status >= 200 {
		w.done = true
		h := w.Header()
		if w.resp != nil && w.resp.Pristine {
			delete(h, "Via")
		} else {
			h[hdrFlyRequestID] = []string{w.id}
			routing.RenameVia(h, w.rt.Via)
		}
		if w.resp != nil {
			for _, op := range w.resp.HeaderOps() {
				if op.Values == nil {
					delete(h, op.Name)
				} else {
					h[op.Name] = op.Values
				}
			}
		}
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *flyResponse) Write(b []byte) (int, error) {
	if !w.done {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

func (w *flyResponse) ReadFrom(r io.Reader) (int64, error) {
	if !w.done {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriterWrapper.ReadFrom(r)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	fly_headers
func (h *Headers) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("unrecognized fly_headers option '%s'", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Headers)(nil)
	_ caddyhttp.MiddlewareHandler = (*Headers)(nil)
	_ caddyfile.Unmarshaler       = (*Headers)(nil)
)
