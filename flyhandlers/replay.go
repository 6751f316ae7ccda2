package flyhandlers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/flyedge/caddy-flyedge/routing"
)

// Limits of fly-replay, as Fly.io's proxy has them.
const (
	// replayBodyLimit is the largest request body a replay can resend.
	replayBodyLimit = 1 << 20
	// maxReplays is how many times one request may be replayed.
	maxReplays = 10
	// replayJSONLimit bounds the JSON form of an instruction.
	replayJSONLimit = 64 << 10
)

// replayContentType is the media type of the JSON form of fly-replay.
const replayContentType = "application/vnd.fly.replay+json"

// hdrFlyReplay and friends are the canonical names of the replay headers.
var (
	hdrFlyReplay       = http.CanonicalHeaderKey("Fly-Replay")
	hdrFlyReplaySrc    = http.CanonicalHeaderKey("Fly-Replay-Src")
	hdrFlyReplayFailed = http.CanonicalHeaderKey("Fly-Replay-Failed")
)

// replay is an app's instruction to send its request elsewhere: the
// fields of a fly-replay header, or of its JSON form.
type replay struct {
	App            string           `json:"app,omitempty"`
	Region         string           `json:"region,omitempty"`
	Instance       string           `json:"instance,omitempty"`
	PreferInstance string           `json:"prefer_instance,omitempty"`
	State          string           `json:"state,omitempty"`
	Elsewhere      bool             `json:"elsewhere,omitempty"`
	Fallback       string           `json:"fallback,omitempty"`
	Transform      *replayTransform `json:"transform,omitempty"`
}

// replayTransform changes the replayed request (JSON form only).
type replayTransform struct {
	Path          string   `json:"path,omitempty"`
	DeleteHeaders []string `json:"delete_headers,omitempty"`
	SetHeaders    []struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	} `json:"set_headers,omitempty"`
}

// parseReplayHeader reads a fly-replay header: fields name=value
// separated by ";", a value in double quotes when it holds a comma or a
// semicolon ("region=\"iad,ord\";app=worker").
func parseReplayHeader(v string) (*replay, error) {
	rp := new(replay)
	for v = strings.TrimSpace(v); v != ""; {
		var field string
		name, rest, ok := strings.Cut(v, "=")
		if !ok {
			return nil, fmt.Errorf("fly-replay: %q: want name=value fields", v)
		}
		name = strings.ToLower(strings.TrimSpace(name))
		rest = strings.TrimLeft(rest, " ")
		if strings.HasPrefix(rest, `"`) {
			end := strings.IndexByte(rest[1:], '"')
			if end < 0 {
				return nil, fmt.Errorf("fly-replay: %s: unterminated quote", name)
			}
			field, rest = rest[1:1+end], rest[2+end:]
			if _, after, ok := strings.Cut(rest, ";"); ok {
				rest = after
			} else if strings.TrimSpace(rest) != "" {
				return nil, fmt.Errorf("fly-replay: %s: text after the quoted value", name)
			} else {
				rest = ""
			}
		} else {
			field, rest, _ = strings.Cut(rest, ";")
			field = strings.TrimSpace(field)
		}
		v = strings.TrimSpace(rest)
		if err := rp.set(name, field); err != nil {
			return nil, err
		}
	}
	return rp, rp.check()
}

// set stores one header field.
func (rp *replay) set(name, v string) error {
	switch name {
	case "app":
		rp.App = v
	case "region":
		rp.Region = v
	case "instance":
		rp.Instance = v
	case "prefer_instance":
		rp.PreferInstance = v
	case "state":
		rp.State = v
	case "elsewhere":
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("fly-replay: elsewhere=%q: want true or false", v)
		}
		rp.Elsewhere = b
	case "fallback":
		rp.Fallback = v
	}
	// other fields (timeout, cache, ...) are not supported and ignored,
	// as Fly.io's proxy ignores fields it does not know
	return nil
}

// parseReplayJSON reads the JSON form of an instruction.
func parseReplayJSON(b []byte) (*replay, error) {
	rp := new(replay)
	if err := json.Unmarshal(b, rp); err != nil {
		return nil, fmt.Errorf("fly-replay JSON: %w", err)
	}
	return rp, rp.check()
}

// check refuses an instruction that cannot be carried out.
func (rp *replay) check() error {
	switch rp.Fallback {
	case "", "force_self", "prefer_self":
	default:
		return fmt.Errorf("fly-replay: fallback=%q: want force_self or prefer_self", rp.Fallback)
	}
	if rp.Instance != "" && rp.PreferInstance != "" {
		return errors.New("fly-replay: instance and prefer_instance both given")
	}
	if t := rp.Transform; t != nil {
		if t.Path != "" && !strings.HasPrefix(t.Path, "/") {
			return fmt.Errorf("fly-replay: transform.path %q: must start with /", t.Path)
		}
		for _, h := range t.SetHeaders {
			if !validHeaderName(h.Name) || strings.ContainsAny(h.Value, "\r\n\x00") {
				return fmt.Errorf("fly-replay: transform.set_headers: %q is not a header", h.Name)
			}
		}
	}
	if len(rp.State) > 1024 {
		return errors.New("fly-replay: state longer than 1024 bytes")
	}
	for i := 0; i < len(rp.State); i++ {
		if c := rp.State[i]; c < ' ' && c != '\t' || c == 0x7f {
			return fmt.Errorf("fly-replay: state holds a control character (%#02x at %d)", c, i)
		}
	}
	return nil
}

// srcValue writes a value of fly-replay-src: as it is when it is one
// token of visible characters without a separator, else as an HTTP
// quoted-string (RFC 9110, section 5.6.4), so what an app put in a
// state stays one field ("x;instance=y" is not a second instance). The
// value holds no control character but tab (check refuses others).
func srcValue(v string) string {
	bare := v != ""
	for i := 0; i < len(v) && bare; i++ {
		c := v[i]
		bare = c > ' ' && c < 0x7f && c != ';' && c != ',' && c != '"' && c != '\\'
	}
	if bare {
		return v
	}
	var b strings.Builder
	b.Grow(len(v) + 8)
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		if v[i] == '"' || v[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('"')
	return b.String()
}

func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// replayBody is a request body that a replay can send again. Each pass
// of the request reads it through a reader of its own (reader), from the
// start; what any pass reads from the client is kept, up to
// replayBodyLimit, so the next pass gets the same bytes, then the rest.
// A body over the limit, one the edge's or the app's replay budget
// (bud) has no room for, or one whose request got its final answer
// (noReplays), is kept no longer: it streams through, and only the bytes
// the current pass has not read yet are held.
//
// What is kept is counted in bud by the capacity of buf, reserved
// before buf grows, and given back as soon as nothing is kept any more,
// or when the request is done (release).
//
// The HTTP client may go on reading a pass's body after that pass is over
// (a machine that answers before reading it all): such a reader is
// closed and reads nothing more from the client, and what it read
// meanwhile goes to the current pass. No lock is held while the client is
// read, so a slow client never holds up the response.
type replayBody struct {
	src   io.ReadCloser
	srcMu sync.Mutex // one read of src at a time
	size  int64      // the body's Content-Length, or -1
	bud   bodyBudget // where what is kept is counted

	mu       sync.Mutex // guards what follows
	buf      []byte     // the bytes from start to read
	start    int64      // position of buf[0] in the body
	read     int64      // bytes read from src
	keep     bool       // keep what is read for a replay
	over     bool       // a replay can no longer have the whole body
	short    bool       // ... because the replay budget had no room for it
	reserved int64      // bytes of bud this body holds (cap(buf) while keep)
	eof      error      // src's final error
	cur      *bodyReader
}

// errPassOver is what the reader of a pass that is over gets.
var errPassOver = errors.New("request body: this pass of the request is over")

// newReplayBody keeps src for replays, within bud (the zero bodyBudget:
// no budget); size is its Content-Length, or -1, and a body over
// replayBodyLimit is never kept.
func newReplayBody(src io.ReadCloser, size int64, bud bodyBudget) *replayBody {
	tooLarge := size > replayBodyLimit
	return &replayBody{src: src, size: size, bud: bud, keep: !tooLarge, over: tooLarge}
}

// canReplay tells whether a replay can send the whole body again, and if
// not, whether because the replay budget had no room for it.
func (b *replayBody) canReplay() (ok, short bool) {
	if b == nil { // no body
		return true, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.over, b.short
}

// reader returns the body for a new pass, from the start; the previous
// pass's reader is closed.
func (b *replayBody) reader() io.ReadCloser {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cur != nil {
		b.cur.closed = true
	}
	b.cur = &bodyReader{b: b, pos: b.start}
	return b.cur
}

// noReplays says that the request got its final answer: nothing more is
// kept for a replay.
func (b *replayBody) noReplays() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.keep, b.over = false, true
	b.trim()
}

// release ends the body's use when its request is done: the last pass's
// reader reads nothing more (an HTTP client still writing it to a
// machine stops), the buffer is dropped and its budget given back.
func (b *replayBody) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.keep, b.over = false, true
	if b.cur != nil {
		b.cur.closed = true
	}
	b.buf, b.start = nil, b.read
	b.giveBack()
}

// giveBack returns the body's budget. The caller holds mu.
func (b *replayBody) giveBack() {
	if b.reserved > 0 {
		b.bud.release(b.reserved)
		b.reserved = 0
	}
}

// trim drops the bytes the current pass has read, once nothing is kept
// for a replay, and gives the buffer kept until then back: what is left
// (what the current pass has not read yet) moves to one of its size.
// The caller holds mu.
func (b *replayBody) trim() {
	if b.keep {
		return
	}
	if b.cur != nil && b.cur.pos > b.start {
		b.buf = b.buf[b.cur.pos-b.start:]
		b.start = b.cur.pos
	}
	if b.reserved > 0 {
		if len(b.buf) > 0 {
			b.buf = bytes.Clone(b.buf)
		}
		b.giveBack()
	}
	if len(b.buf) == 0 {
		b.buf = nil
	}
}

// grow makes room in buf for n more bytes to keep, within the budget. The
// caller holds mu.
func (b *replayBody) grow(n int) bool {
	need := len(b.buf) + n
	if need <= cap(b.buf) {
		return true
	}
	// the Content-Length at once; else doubling, from 4 KiB; never over
	// the limit (what is kept is not)
	want := max(2*cap(b.buf), need, 4<<10)
	if b.size > 0 {
		want = max(need, int(b.size))
	}
	want = max(min(want, replayBodyLimit), need)
	if !b.bud.reserve(int64(want - cap(b.buf))) {
		want = need // the least that does, when there is no room for more
		if !b.bud.reserve(int64(want - cap(b.buf))) {
			return false
		}
	}
	nb := make([]byte, len(b.buf), want)
	copy(nb, b.buf)
	b.buf = nb
	b.reserved = int64(want)
	return true
}

// bytesRead returns how many bytes were read from the client.
func (b *replayBody) bytesRead() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.read
}

// clientErr returns the error reading the client's body failed with, or
// nil (none yet, or the body's end).
func (b *replayBody) clientErr() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.eof == io.EOF {
		return nil
	}
	return b.eof
}

// bodyReader is one pass's view of a replayBody.
type bodyReader struct {
	b      *replayBody
	pos    int64 // guarded by b.mu
	closed bool  // guarded by b.mu
}

func (r *bodyReader) Read(p []byte) (int, error) {
	b := r.b
	for {
		b.mu.Lock()
		if r.closed {
			b.mu.Unlock()
			return 0, errPassOver
		}
		if r.pos < b.read { // what another pass read, or kept
			n := copy(p, b.buf[r.pos-b.start:])
			r.pos += int64(n)
			b.trim()
			b.mu.Unlock()
			return n, nil
		}
		if b.eof != nil {
			err := b.eof
			b.mu.Unlock()
			return 0, err
		}
		b.mu.Unlock()

		b.srcMu.Lock()
		b.mu.Lock()
		behind := r.closed || r.pos < b.read || b.eof != nil
		b.mu.Unlock()
		if behind { // another reader read meanwhile: look again
			b.srcMu.Unlock()
			continue
		}
		n, err := b.src.Read(p)
		b.mu.Lock()
		b.add(p[:n], r)
		if err != nil {
			b.eof = err
		}
		closed := r.closed
		b.mu.Unlock()
		b.srcMu.Unlock()
		if closed && n > 0 { // read for a pass that is over: the current one gets it
			return 0, errPassOver
		}
		if n == 0 && err == nil {
			continue
		}
		return n, err
	}
}

// add records bytes read from the client by reader r: buf always holds
// the body from start to read, r has consumed them unless it is closed
// (then the current pass gets them), and once nothing is kept for a
// replay the current pass's consumed bytes are dropped. The caller holds
// mu.
func (b *replayBody) add(p []byte, r *bodyReader) {
	if len(p) == 0 {
		return
	}
	b.read += int64(len(p))
	if b.keep && b.read-b.start > replayBodyLimit {
		b.keep, b.over = false, true
	}
	if b.keep && !b.grow(len(p)) {
		b.keep, b.over, b.short = false, true, true
	}
	if !b.keep && !r.closed && len(b.buf) == 0 { // streaming through: nothing to hold
		r.pos += int64(len(p))
		b.buf, b.start = nil, b.read
		b.giveBack()
		return
	}
	b.buf = append(b.buf, p...)
	if !r.closed {
		r.pos += int64(len(p))
	}
	b.trim()
}

// Defaults of the replay budget (Headers' ReplayBuffers and
// ReplayBuffersPerApp).
const (
	defaultReplayBuffers       = 128 << 20
	defaultReplayBuffersPerApp = 32 << 20
)

// bufferBudget counts the request body bytes this process keeps for
// fly-replay, in all and by the app of the request.
type bufferBudget struct {
	mu   sync.Mutex
	held int64
	apps map[string]int64
}

// replayBuffers is the edge's count, shared by every fly_headers handler
// (of every server and config) of the process.
var replayBuffers = &bufferBudget{apps: make(map[string]int64)}

// usage returns the bytes kept in all, and for app.
func (a *bufferBudget) usage(app string) (all, ofApp int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.held, a.apps[app]
}

// bodyBudget is where one request's body is counted: the edge's count,
// the request's app, and its handler's limits. The zero bodyBudget
// counts nothing and has room for everything.
type bodyBudget struct {
	all           *bufferBudget
	app           string
	total, perApp int64
}

// reserve counts n more bytes, if the edge and the app have room for
// them.
func (bb bodyBudget) reserve(n int64) bool {
	a := bb.all
	if a == nil {
		return true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.held+n > bb.total || a.apps[bb.app]+n > bb.perApp {
		return false
	}
	a.held += n
	a.apps[bb.app] += n
	return true
}

// release gives back n bytes reserve counted.
func (bb bodyBudget) release(n int64) {
	a := bb.all
	if a == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.held -= n
	if a.apps[bb.app] -= n; a.apps[bb.app] <= 0 {
		delete(a.apps, bb.app)
	}
}

// Close does not close the client's body: the next pass may need the
// rest, and the HTTP server closes it when the request is done.
func (r *bodyReader) Close() error { return nil }

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
	if ok, short := body.canReplay(); !ok {
		if short {
			return CodeReplayNoBuffer, "fly-replay: the edge holds as many request bodies for replays as it may now; this one went through without being kept", fw, nil
		}
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
		src += ";state=" + srcValue(rp.State)
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
