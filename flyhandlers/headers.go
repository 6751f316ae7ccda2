package flyhandlers

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
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
		}
		rt.ObserveRequest(st.status, time.Since(st.start), st.in, st.out)
		st.release()
	}()
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 && r.Method != http.MethodConnect && r.Header.Get("Upgrade") == "" {
		// a body over the limit streams through and cannot be replayed
		body = newReplayBody(r.Body, r.ContentLength > replayBodyLimit)
		st.body = body
		r.Body = body.reader()
	}
	fw := newFlyResponse(w, rt, id, true, st)
	err = next.ServeHTTP(fw, r)
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
	if replayed > 0 && !fellBack {
		rt.CountReplay("failed")
		code, msg = CodeReplayFailed, fmt.Sprintf("fly-replay to app %s failed: %s", fw.rt.App, msg)
	}
	return h.fail(fw, r, fw.rt, code, msg, id, err)
}

// fail logs a failure the edge caused and answers the client with it.
func (h *Headers) fail(w http.ResponseWriter, r *http.Request, rt *routing.Route, code Code, msg, id string, err error) error {
	level := zapcore.InfoLevel
	if code == CodeNoApp || code == CodeNoService {
		level = zapcore.DebugLevel
	}
	if c := h.logger.Check(level, "request failed"); c != nil {
		machine := routing.MachineOf(r)
		if machine == "" {
			machine = r.Header.Get(routing.HeaderForceInstance)
		}
		c.Write(zap.String("app", rt.App), zap.String("machine", machine),
			zap.String("request_id", id), zap.String("code", code.ID), zap.String("reason", msg), zap.Error(err))
	}
	return writeError(w, r, code, msg, id)
}

// replay carries out the instruction the app answered with (fw.replay):
// the request goes, with its body, to the target the instruction names,
// and, when that fails and the instruction asks for it, back to the
// machine that asked. It returns the response writer of the last pass
// and its error, or the code and message of a replay that cannot be
// made.
func (h *Headers) replay(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, fw *flyResponse, body *replayBody, replayed int, fellBack bool) (Code, string, *flyResponse, error) {
	rp, from := fw.replay, fw.rt
	if fellBack {
		return CodeReplayLoop, "fly-replay: a request that fell back to the machine that replayed it cannot be replayed again", fw, nil
	}
	if fw.replayErr != nil {
		return CodeReplayInvalid, fw.replayErr.Error(), fw, nil
	}
	if replayed >= maxReplays {
		return CodeReplayLoop, fmt.Sprintf("fly-replay: replayed %d times, the most a request may be", maxReplays), fw, nil
	}
	if body != nil && !body.canReplay() {
		return CodeReplayTooLarge, fmt.Sprintf("fly-replay: the request body is over %d bytes, the most a replay can resend", replayBodyLimit), fw, nil
	}
	target := from.App
	if rp.App != "" {
		target = rp.App
	}
	if !h.app.SameOrg(from.App, target) {
		return CodeReplayTarget, fmt.Sprintf("fly-replay: app %s may not replay to app %s (not in its organization)", from.App, target), fw, nil
	}
	rt, err := h.app.AppRoute(target, from.Port.Port)
	if err != nil {
		return CodeReplayTarget, fmt.Sprintf("fly-replay to app %s: %v", target, err), fw, nil
	}

	// the machine that asked: it is named in fly-replay-src, left out
	// with elsewhere, and the fallback's target
	self, selfRegion := answeredBy(r, from)
	src := "instance=" + self + ";region=" + selfRegion + ";t=" + strconv.FormatInt(time.Now().UnixMicro(), 10)
	if rp.State != "" {
		src += ";state=" + rp.State
	}
	r.Header.Set(hdrFlyReplaySrc, src)
	if t := rp.Transform; t != nil {
		for _, name := range t.DeleteHeaders {
			r.Header.Del(name)
		}
		for _, sh := range t.SetHeaders {
			r.Header.Set(sh.Name, sh.Value)
		}
		if t.Path != "" {
			path, query, _ := strings.Cut(t.Path, "?")
			r.URL.Path, r.URL.RawPath, r.URL.RawQuery = path, "", query
			r.RequestURI = t.Path
		}
	}
	pref := routing.Preference{ForceInstance: rp.Instance, PreferInstance: rp.PreferInstance, ForceRegion: rp.Region}
	if rp.Elsewhere && target == from.App {
		pref.Exclude = self
	}
	pass := func(rt *routing.Route, pref routing.Preference, replayable bool) (*flyResponse, error) {
		routing.SetRequestRoute(r, rt)
		routing.SetReplayPreference(r, pref)
		routing.ClearMachine(r)
		routing.ClearUnroutable(r)
		delete(r.Header, hdrPreferredUnavail)
		if body != nil {
			r.Body = body.reader()
		}
		fw := newFlyResponse(w, rt, fw.id, replayable, fw.stats)
		err := next.ServeHTTP(fw, r)
		fw.finish()
		return fw, err
	}
	if c := h.logger.Check(zapcore.DebugLevel, "replaying"); c != nil {
		c.Write(zap.String("app", from.App), zap.String("machine", self), zap.String("target", target), zap.String("request_id", fw.id))
	}
	nfw, err := pass(rt, pref, true)
	if err == nil || nfw.done || rp.Fallback == "" || self == "" {
		return Code{}, "", nfw, err
	}
	code, msg, ok := failure(r, rt, err)
	if !ok {
		return Code{}, "", nfw, err
	}
	// back to the machine that asked, told what went wrong
	r.Header.Set(hdrFlyReplayFailed, "code="+code.ID+";app="+target+";reason="+msg)
	back := routing.Preference{ForceInstance: self}
	if rp.Fallback == "prefer_self" {
		back = routing.Preference{PreferInstance: self}
	}
	nfw, err = pass(from, back, false)
	nfw.fellBack = true
	return Code{}, "", nfw, err
}

// answeredBy returns the machine that answered r on route rt, and its
// region: as transport fly recorded it, else by the address the reverse
// proxy dialed.
func answeredBy(r *http.Request, rt *routing.Route) (id, region string) {
	i := -1
	if m := routing.MachineOf(r); m != "" {
		i = rt.MachineIndex(m)
	} else if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		addr, _ := repl.GetString("http.reverse_proxy.upstream.hostport")
		i = rt.MachineByDial(addr)
	}
	if i < 0 {
		return "", ""
	}
	return rt.MachineID(i), rt.MachineRegion(i)
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
		pref := routing.RequestPreference(r) // the client's, or a fly-replay's
		switch outcome {
		case routing.ForcedUnknown:
			return CodeForcedUnknown, fmt.Sprintf("%s: %q is not a machine of app %s", routing.HeaderForceInstance, pref.ForceInstance, rt.App), true
		case routing.ForcedUnavailable:
			return CodeForcedUnavailable, fmt.Sprintf("%s: machine %s of app %s cannot take requests now", routing.HeaderForceInstance, pref.ForceInstance, rt.App), true
		case routing.ForcedRegionUnavailable:
			return CodeForcedRegion, fmt.Sprintf("%s: no machine of app %s in %s can take requests now", routing.HeaderForceRegion, rt.App, pref.ForceRegion), true
		case routing.AtHardLimit:
			return CodeAtHardLimit, fmt.Sprintf("every machine of app %s is at its concurrency hard limit", rt.App), true
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
	hdr  http.Header // the client's header as this pass found it
	done bool        // the final header is written

	// a response that asks for a replay is kept from the client
	replayable bool
	intercept  bool          // this response asks for a replay
	jsonBody   *bytes.Buffer // its JSON form, while it is read
	replay     *replay       // the instruction, after the pass
	replayErr  error         // why the instruction cannot be read
	fellBack   bool          // this pass went back to the machine that replayed

	stats *reqStats // the request's, shared by its passes
}

// reqStats are what a request's metrics need, and the writers of its
// passes.
type reqStats struct {
	start   time.Time
	status  int
	in, out int64
	writers []*flyResponse
	buf     [2]*flyResponse // writers' first room
	body    *replayBody     // the request's body, when it has one
	proto   string          // the client's protocol, as Via writes it
}

// viaProto returns the request's protocol version as Via writes it
// ("1.1", "2", "3").
func viaProto(r *http.Request) string {
	switch r.ProtoMajor {
	case 2:
		return "2"
	case 3:
		return "3"
	}
	return "1.1"
}

// flyResponses reuses the response writers of requests that are done,
// their header maps with them.
var flyResponses = sync.Pool{New: func() any { return &flyResponse{hdr: make(http.Header, 8)} }}

// newFlyResponse returns a writer for one pass of a request; st.release
// returns it to the pool when the request is done.
func newFlyResponse(w http.ResponseWriter, rt *routing.Route, id string, replayable bool, st *reqStats) *flyResponse {
	fw := flyResponses.Get().(*flyResponse)
	hdr := fw.hdr // what the handlers before us put in the header, to go back to if this pass asks for a replay
	clear(hdr)
	maps.Copy(hdr, w.Header()) // the values' slices are shared, never written in place
	*fw = flyResponse{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, rt: rt, id: id, replayable: replayable,
		hdr: hdr, stats: st}
	if o := rt.Service.HTTPOptions; o != nil {
		fw.resp = o.Response
	}
	if st != nil {
		st.writers = append(st.writers, fw)
	}
	return fw
}

// release returns the request's writers to the pool.
func (st *reqStats) release() {
	for i, fw := range st.writers {
		fw.ResponseWriterWrapper.ResponseWriter = nil
		fw.rt, fw.resp, fw.stats, fw.replay, fw.jsonBody = nil, nil, nil, nil, nil
		flyResponses.Put(fw)
		st.writers[i] = nil
	}
	st.writers = st.writers[:0]
}

// Header returns the client's header. A response that asks for a replay
// leaves nothing there: when its header is written, the client's goes
// back to what it was before the pass, and what the pass adds after
// that goes nowhere.
func (w *flyResponse) Header() http.Header {
	if w.intercept {
		return w.hdr
	}
	return w.ResponseWriter.Header()
}

func (w *flyResponse) WriteHeader(status int) {
	switch {
	case w.intercept:
		return
	case w.done:
		w.ResponseWriter.WriteHeader(status) // Caddy's superfluous-call warning, as without us
		return
	}
	h := w.ResponseWriter.Header()
	if status >= 200 || status == http.StatusSwitchingProtocols {
		if v := first(h[hdrFlyReplay]); status != http.StatusSwitchingProtocols && (v != "" || strings.HasPrefix(first(h["Content-Type"]), replayContentType)) {
			w.intercept = true
			switch {
			case !w.replayable:
				w.replay, w.replayErr = new(replay), errors.New("fly-replay: asked again after the replay fell back")
			case v != "":
				w.replay, w.replayErr = parseReplayHeader(v)
				if w.replayErr != nil {
					w.replay = new(replay)
				}
			default:
				w.jsonBody = new(bytes.Buffer)
			}
			clear(h)
			maps.Copy(h, w.hdr)
			return
		}
		w.done = true
		if w.stats != nil {
			w.stats.status = status
			if w.stats.body != nil {
				w.stats.body.noReplays() // the final answer: nothing more to keep
			}
		}
		if w.resp != nil && w.resp.Pristine {
			delete(h, "Via")
		} else {
			h[hdrFlyRequestID] = []string{w.id}
			proto := ""
			if w.stats != nil {
				proto = w.stats.proto
			}
			routing.RenameVia(h, proto, w.rt.Via) // the client's protocol, as Fly's proxy writes it
		}
		if w.resp != nil {
			for _, op := range w.resp.HeaderOps() {
				if op.Values == nil {
					delete(h, op.Name)
				} else {
					h[op.Name] = slices.Clone(op.Values) // handlers after us may change values in place
				}
			}
		}
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *flyResponse) Write(b []byte) (int, error) {
	if !w.done && !w.intercept {
		w.WriteHeader(http.StatusOK)
	}
	if w.intercept {
		w.keepJSON(b)
		return len(b), nil
	}
	n, err := w.ResponseWriter.Write(b)
	if w.stats != nil {
		w.stats.out += int64(n)
	}
	return n, err
}

func (w *flyResponse) ReadFrom(r io.Reader) (int64, error) {
	if !w.done && !w.intercept {
		w.WriteHeader(http.StatusOK)
	}
	if w.intercept {
		return io.Copy(writerFunc(func(b []byte) (int, error) { w.keepJSON(b); return len(b), nil }), r)
	}
	n, err := w.ResponseWriterWrapper.ReadFrom(r)
	if w.stats != nil {
		w.stats.out += n
	}
	return n, err
}

// Flush passes on, except for a response kept from the client.
func (w *flyResponse) Flush() {
	if !w.done && !w.intercept {
		w.WriteHeader(http.StatusOK) // as net/http does for a flush before the header
	}
	if !w.intercept {
		_ = http.NewResponseController(w.ResponseWriter).Flush()
	}
}

// keepJSON collects the JSON form of an instruction, up to its limit.
func (w *flyResponse) keepJSON(b []byte) {
	if w.jsonBody == nil {
		return
	}
	if w.jsonBody.Len()+len(b) > replayJSONLimit {
		w.jsonBody = nil
		w.replayErr = fmt.Errorf("fly-replay JSON: over %d bytes", replayJSONLimit)
		w.replay = new(replay)
		return
	}
	w.jsonBody.Write(b)
}

// finish reads the JSON form of an instruction once its body is in.
func (w *flyResponse) finish() {
	if w.jsonBody != nil {
		w.replay, w.replayErr = parseReplayJSON(w.jsonBody.Bytes())
		if w.replayErr != nil {
			w.replay = new(replay)
		}
		w.jsonBody = nil
	}
}

// first returns a header's first value, or "" (http.Header.Get for a
// name known to be canonical, without checking it again).
func first(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

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
