// The response writer of fly_headers: flyResponse puts the edge's headers
// on a response, keeps a fly-replay answer from the client, and counts
// what a request's metrics need; its writers come from a pool.

package flyhandlers

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/flyedge/caddy-flyedge/routing"
)

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

// release returns the request's writers to the pool, holding nothing of
// the request: a header map grown large is dropped, not kept in the pool.
func (st *reqStats) release() {
	for i, fw := range st.writers {
		fw.ResponseWriterWrapper.ResponseWriter = nil
		fw.rt, fw.resp, fw.stats, fw.replay, fw.jsonBody, fw.replayErr = nil, nil, nil, nil, nil, nil
		if len(fw.hdr) > 32 {
			fw.hdr = make(http.Header, 8)
		} else {
			clear(fw.hdr)
		}
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
