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
	return nil
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

// replayBody is a request body that keeps what the machine read of it,
// up to replayBodyLimit, so a replay can send the same body again: what
// was read, then the rest. A body over the limit streams through and
// cannot be replayed.
type replayBody struct {
	src      io.ReadCloser
	buf      *bytes.Buffer
	read     int64 // bytes read from src
	over     bool
	replayed io.Reader // the body of a replay, when one is being sent
}

var bodyBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func newReplayBody(src io.ReadCloser) *replayBody {
	return &replayBody{src: src, buf: bodyBufs.Get().(*bytes.Buffer)}
}

func (b *replayBody) Read(p []byte) (int, error) {
	if b.replayed != nil {
		n, err := b.replayed.Read(p)
		b.keep(p[:n])
		return n, err
	}
	n, err := b.src.Read(p)
	b.read += int64(n)
	b.keep(p[:n])
	return n, err
}

// keep records bytes read from the original body.
func (b *replayBody) keep(p []byte) {
	if b.replayed != nil || b.over || len(p) == 0 {
		return
	}
	if b.buf.Len()+len(p) > replayBodyLimit {
		b.over = true
		b.buf.Reset()
		return
	}
	b.buf.Write(p)
}

// Close does not close the client's body: a replay may need the rest,
// and the HTTP server closes it when the request is done.
func (b *replayBody) Close() error { return nil }

// rewind makes the body start again for a replay; false when it was over
// the limit.
func (b *replayBody) rewind() bool {
	if b.over {
		return false
	}
	if b.replayed == nil {
		// what the machine read, then what it left unread
		b.replayed = io.MultiReader(bytes.NewReader(b.buf.Bytes()), &keeping{b})
		return true
	}
	// a second replay: the first replay read everything it sent into buf
	// by way of keeping; send buf again
	b.replayed = io.MultiReader(bytes.NewReader(b.buf.Bytes()), &keeping{b})
	return true
}

// keeping reads the rest of the original body into buf as it goes, so a
// later replay has it too.
type keeping struct{ b *replayBody }

func (k *keeping) Read(p []byte) (int, error) {
	n, err := k.b.src.Read(p)
	k.b.read += int64(n)
	if n > 0 && !k.b.over {
		if k.b.buf.Len()+n > replayBodyLimit {
			k.b.over = true
		} else {
			k.b.buf.Write(p[:n])
		}
	}
	return n, err
}

// release returns the buffer.
func (b *replayBody) release() {
	if b.buf.Cap() <= 4*replayBodyLimit {
		b.buf.Reset()
		bodyBufs.Put(b.buf)
	}
	b.buf = nil
}
