package flyhandlers

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
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
// Fly-Force-Region, Fly-Prefer-Instance-Id and Fly-Force-Instance-Id;
// so are the other headers that name a client or the way it came
// (Forwarded, X-Real-IP, X-Forwarded-Host), which only a trusted proxy
// may pass on.
//
// A request for a host no app answers to, or for a port the app has no
// service on, is answered 404 and never reaches an app (default deny).
// When the `fly` selection policy, or the `fly` transport after machines
// refused the connection, finds no machine for the request, the client
// gets an answer it can read: 404 for a Fly-Force-Instance-Id that is no
// machine of the app, 503 for a machine that cannot take requests.
//
// The app's name is available as {http.vars.fly.app}.
//
// A request body is kept for fly-replay (up to 1 MiB a request) within
// a budget: ReplayBuffers in all, ReplayBuffersPerApp for the requests of
// one app. A body the budget has no room for streams through to the
// machine as any other; only a fly-replay answer to its request fails,
// with 503 PY06.
type Headers struct {
	// The most request body bytes kept for fly-replay at once by the
	// edge, the requests of every app together (the count is the
	// process's, shared by every fly_headers handler; each holds it to
	// its own limit). Default: 128 MiB.
	ReplayBuffers int64 `json:"replay_buffers,omitempty"`

	// The most request body bytes kept for fly-replay at once for the
	// requests of one app. Default: 32 MiB.
	ReplayBuffersPerApp int64 `json:"replay_buffers_per_app,omitempty"`

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
	if h.ReplayBuffers == 0 {
		h.ReplayBuffers = defaultReplayBuffers
	}
	if h.ReplayBuffersPerApp == 0 {
		h.ReplayBuffersPerApp = defaultReplayBuffersPerApp
	}
	return nil
}

// Validate refuses negative budgets.
func (h *Headers) Validate() error {
	if h.ReplayBuffers < 0 || h.ReplayBuffersPerApp < 0 {
		return fmt.Errorf("fly_headers: replay_buffers %d, replay_buffers_per_app %d: want sizes of 0 or more (0: the default)", h.ReplayBuffers, h.ReplayBuffersPerApp)
	}
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
	hdrForwarded        = http.CanonicalHeaderKey("Forwarded")
	hdrXRealIP          = http.CanonicalHeaderKey("X-Real-IP")
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
	vars := routing.RequestVars(r) // one walk of the context chain for every variable below
	trusted, _ := vars[caddyhttp.TrustedProxyVarKey].(bool)
	hdr := r.Header
	id := ""
	if trusted {
		id = hdr.Get(hdrFlyRequestID) // a trusted proxy's ID goes on
	}
	if id == "" {
		id = newRequestID(time.Now(), h.region)
	}
	if vars != nil {
		vars[RequestIDVarKey] = id
	}

	rt, err := h.app.RouteForVars(r, vars)
	if err != nil {
		code := CodeNoApp
		switch {
		case errors.Is(err, routing.ErrNoService):
			code = CodeNoService
		case errors.Is(err, routing.ErrMisdirected):
			code = CodeMisdirected
		}
		if c := h.logger.Check(zapcore.DebugLevel, "request denied"); c != nil {
			c.Write(zap.String("hostname", r.Host), zap.String("request_id", id), zap.String("code", code.ID), zap.Error(err))
		}
		w.Header().Set(hdrFlyRequestID, id)
		return writeError(w, r, code, err.Error(), id)
	}

	// the machine slot the fly policy takes for the request (concurrency
	// limits) is given back here, when the handlers after this return (a
	// replay to another app's limited service falls back to the request's
	// end)
	if rt.Service.Concurrency != nil {
		defer routing.HoldSlots(r).Release()
	}

	clientIP, _ := vars[caddyhttp.ClientIPVarKey].(string)
	if !trusted {
		for k := range hdr {
			if len(k) > 4 && k[:4] == "Fly-" && !clientFlyHeaders[k] {
				delete(hdr, k)
			}
		}
		delete(hdr, hdrXFF)
		delete(hdr, hdrXFHost)
		delete(hdr, hdrForwarded)
		delete(hdr, hdrXRealIP)
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

	st := &reqStats{start: time.Now(), proto: viaProto(r)}
	st.writers = st.buf[:0]
	var body *replayBody
	defer func() {
		if body != nil {
			st.in = body.bytesRead()
			body.release()
		}
		rt.ObserveRequest(st.status, time.Since(st.start), st.in, st.out)
		st.release()
	}()
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 && r.Method != http.MethodConnect && r.Header.Get("Upgrade") == "" {
		// a body over the limit streams through and cannot be replayed
		body = newReplayBody(r.Body, r.ContentLength, bodyBudget{replayBuffers, rt.App, h.ReplayBuffers, h.ReplayBuffersPerApp})
		st.body = body
		r.Body = body.reader()
	}
	fw := newFlyResponse(w, rt, id, true, st)
	pass, early := r, (*earlyAnswer)(nil)
	if body != nil && r.ContentLength > replayBodyLimit {
		// a body that can never be replayed: see earlyAnswer
		early = new(earlyAnswer)
		pass = r.WithContext(httptrace.WithClientTrace(r.Context(), early.trace()))
	}
	err = next.ServeHTTP(fw, pass)
	fw.finish()
	replayed, fellBack := 0, false
	for err == nil && fw.replay != nil {
		var code Code
		var msg string
		code, msg, fw, err = h.replay(w, r, next, fw, body, replayed, fellBack)
		if code.ID != "" {
			rt.CountReplay("failed")
			return h.fail(newFlyResponse(w, fw.rt, id, false, st), r, fw.rt, code, msg, id, err)
		}
		replayed++
		if fw.fellBack {
			fellBack = true
			rt.CountReplay("fallback")
		} else {
			rt.CountReplay("replayed")
		}
	}
	if err == nil || fw.done {
		return err
	}
	code, msg, ok := failure(r, fw.rt, err)
	if !ok {
		return err
	}
	if early != nil && replayed == 0 && code == CodeIncomplete && early.lost(body) {
		code, msg = CodeReplayTooLarge, fmt.Sprintf("the request body is over %d bytes, the most a replay can resend; the machine stopped reading it and closed the connection before the edge had sent it (its answer, most likely a fly-replay, was lost with it)", replayBodyLimit)
	}
	if replayed > 0 && !fellBack {
		rt.CountReplay("failed")
		code, msg = CodeReplayFailed, fmt.Sprintf("fly-replay to app %s failed: %s", fw.rt.App, msg)
	}
	return h.fail(fw, r, fw.rt, code, msg, id, err)
}

// earlyAnswer watches the first pass of a request whose body is over the
// replay limit by its Content-Length, so cannot be replayed: did the
// machine begin its answer, or stop taking the body, before the edge had
// written the whole request? A machine that answers such a request with
// fly-replay without reading the body, then closes the connection (many
// servers do with an unread body), makes the edge's write of the body
// fail while the answer is on its way; which of the two Go's HTTP client
// reports first is a race, and when the write error wins the answer is
// lost. Either way the edge answers as it does when the answer wins, 413
// PY03, not 502 PU02, which would blame the machine for the body the
// client sent.
type earlyAnswer struct {
	wrote    atomic.Bool // the whole request was written
	answered atomic.Bool // the machine's answer began before that
	cut      atomic.Bool // the request's write failed
}

func (e *earlyAnswer) trace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				e.wrote.Store(true)
			} else {
				e.cut.Store(true)
			}
		},
		GotFirstResponseByte: func() {
			if !e.wrote.Load() {
				e.answered.Store(true)
			}
		},
	}
}

// lost tells whether the machine's answer may have been lost to the
// race: it began before the request was written, or the write failed
// on the machine's side (not a read of the client's body: body).
func (e *earlyAnswer) lost(body *replayBody) bool {
	return e.answered.Load() || e.cut.Load() && body.clientErr() == nil
}

// RequestIDVarKey is the request variable ({http.vars.fly.request_id})
// with the request's Fly-Request-Id.
const RequestIDVarKey = "fly.request_id"

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	fly_headers {
//		replay_buffers         <size>
//		replay_buffers_per_app <size>
//	}
//
// Sizes in bytes or with a unit (128MiB, 64MB).
func (h *Headers) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var dst *int64
		switch d.Val() {
		case "replay_buffers":
			dst = &h.ReplayBuffers
		case "replay_buffers_per_app":
			dst = &h.ReplayBuffersPerApp
		default:
			return d.Errf("unrecognized fly_headers option '%s'", d.Val())
		}
		name := d.Val()
		if !d.NextArg() {
			return d.ArgErr()
		}
		size, err := humanize.ParseBytes(d.Val())
		if err != nil || size == 0 || size > 1<<50 {
			return d.Errf("%s %q: want a size, such as 64MiB", name, d.Val())
		}
		*dst = int64(size)
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Headers)(nil)
	_ caddy.Validator             = (*Headers)(nil)
	_ caddyhttp.MiddlewareHandler = (*Headers)(nil)
	_ caddyfile.Unmarshaler       = (*Headers)(nil)
)
