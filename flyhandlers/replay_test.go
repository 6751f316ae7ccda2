package flyhandlers

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseReplayHeader(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want replay
		err  string
	}{
		{"region=sjc", replay{Region: "sjc"}, ""},
		{`region="iad,ord,us,na";app=worker`, replay{Region: "iad,ord,us,na", App: "worker"}, ""},
		{"instance=00bb33ff ; state=a=b", replay{Instance: "00bb33ff", State: "a=b"}, ""},
		{"prefer_instance=x;elsewhere=true;fallback=prefer_self;timeout=2s", replay{PreferInstance: "x", Elsewhere: true, Fallback: "prefer_self"}, ""},
		{`state="semi;colon";app=w`, replay{State: "semi;colon", App: "w"}, ""},
		{"APP=w", replay{App: "w"}, ""},
		{"", replay{}, ""},
		{"region", replay{}, "want name=value"},
		{`region="iad`, replay{}, "unterminated quote"},
		{`region="iad"x`, replay{}, "text after the quoted value"},
		{"elsewhere=maybe", replay{}, "elsewhere"},
		{"fallback=sometimes", replay{}, `fallback="sometimes"`},
		{"instance=a;prefer_instance=b", replay{}, "both given"},
	} {
		got, err := parseReplayHeader(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want an error with %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got.App != tc.want.App || got.Region != tc.want.Region || got.Instance != tc.want.Instance ||
			got.PreferInstance != tc.want.PreferInstance || got.State != tc.want.State || got.Elsewhere != tc.want.Elsewhere || got.Fallback != tc.want.Fallback {
			t.Errorf("%q: %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// FuzzParseReplay: an app's fly-replay answer, header or JSON, is the
// tenant's input: it must never crash the edge, and an accepted one is
// one the edge can carry out.
func FuzzParseReplay(f *testing.F) {
	for _, s := range []string{"region=sjc", `region="iad,ord";app=x;state="a;b"`, "elsewhere=true", `{"app":"w","transform":{"path":"/a","set_headers":[{"name":"X","value":"y"}]}}`, `"`, "=;=", "fallback=force_self"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, parse := range []func() (*replay, error){
			func() (*replay, error) { return parseReplayHeader(s) },
			func() (*replay, error) { return parseReplayJSON([]byte(s)) },
		} {
			rp, err := parse()
			if err != nil {
				continue
			}
			if rp.check() != nil {
				t.Fatalf("%q: accepted an instruction check refuses", s)
			}
		}
	})
}

// TestReplayBody: every pass reads the whole body, whatever part of it
// the passes before read; a pass that is over reads nothing more, and
// what it had read reaches the next; a body over the limit streams
// through once.
func TestReplayBody(t *testing.T) {
	payload := bytes.Repeat([]byte("abcdefgh"), 1000)
	for _, readFirst := range []int{0, 100, len(payload)} {
		b := newReplayBody(io.NopCloser(bytes.NewReader(payload)), -1, bodyBudget{})
		first := b.reader()
		io.ReadFull(first, make([]byte, readFirst))
		for pass := range 3 {
			if ok, _ := b.canReplay(); !ok {
				t.Fatalf("read %d first, pass %d: cannot replay", readFirst, pass)
			}
			r := b.reader()
			if n, err := first.Read(make([]byte, 10)); n != 0 || err != errPassOver {
				t.Fatalf("the first pass's reader read %d, %v after the next pass began", n, err)
			}
			got, _ := io.ReadAll(r)
			if !bytes.Equal(got, payload) {
				t.Fatalf("read %d first, pass %d: %d bytes that differ", readFirst, pass, len(got))
			}
		}
		if b.bytesRead() != int64(len(payload)) {
			t.Errorf("bytes read from the client: %d", b.bytesRead())
		}
	}

	// an old pass blocked in a read when the replay begins: what it gets
	// goes to the new pass
	pr, pw := io.Pipe()
	src := &readStarted{ReadCloser: pr, started: make(chan struct{})}
	b := newReplayBody(src, -1, bodyBudget{})
	old := b.reader()
	got := make(chan error, 1)
	go func() { _, err := old.Read(make([]byte, 64)); got <- err }()
	<-src.started // old is in src.Read
	r := b.reader()
	go func() { pw.Write([]byte("hello ")); pw.Write([]byte("world")); pw.Close() }()
	if err := <-got; err != errPassOver {
		t.Errorf("the old pass got %v, want errPassOver", err)
	}
	if all, _ := io.ReadAll(r); string(all) != "hello world" {
		t.Errorf("the new pass got %q", all)
	}

	big := bytes.Repeat([]byte("x"), replayBodyLimit+1)
	b = newReplayBody(io.NopCloser(bytes.NewReader(big)), -1, bodyBudget{})
	if got, _ := io.ReadAll(b.reader()); len(got) != len(big) {
		t.Fatalf("a large body streamed %d of %d bytes", len(got), len(big))
	}
	if ok, _ := b.canReplay(); ok || len(b.buf) != 0 {
		t.Errorf("a body over the limit: replayable %t, %d bytes kept", ok, len(b.buf))
	}
	// once the final answer started, nothing is kept
	b = newReplayBody(io.NopCloser(bytes.NewReader(payload)), -1, bodyBudget{})
	r = b.reader()
	io.ReadFull(r, make([]byte, 100))
	b.noReplays()
	rest, _ := io.ReadAll(r)
	if len(rest) != len(payload)-100 || len(b.buf) != 0 {
		t.Errorf("after noReplays: %d bytes read on, %d kept", len(rest), len(b.buf))
	}
}

// readStarted closes started when its first Read begins.
type readStarted struct {
	io.ReadCloser
	once    sync.Once
	started chan struct{}
}

func (r *readStarted) Read(p []byte) (int, error) {
	r.once.Do(func() { close(r.started) })
	return r.ReadCloser.Read(p)
}

// TestReplayTooLargeUnread: a body over the replay limit, with its
// Content-Length, to a machine that answers fly-replay without reading
// it, is 413 PY03 every time, never a 502 blaming the machine: whether
// the machine keeps the connection open a while (Go's server) or closes
// it at once, unread body and all, so that the edge's write of the body
// fails while the answer is on its way.
func TestReplayTooLargeUnread(t *testing.T) {
	e := newTestEdge(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Fly-Replay", "elsewhere=true")
		w.WriteHeader(http.StatusConflict)
	}, nil)
	big := bytes.Repeat([]byte("x"), 2<<20)
	run := func(t *testing.T) {
		bad := 0
		for i := range 50 {
			status, body, _ := e.do(t, "POST", "/upload", big, nil)
			if status != http.StatusRequestEntityTooLarge || !strings.HasPrefix(body, "PY03: ") {
				bad++
				t.Errorf("run %d: %d %q, want 413 PY03", i, status, body)
			}
		}
		if bad > 0 {
			t.Errorf("%d of 50 runs failed", bad)
		}
	}
	t.Run("go server", run)
	t.Run("closes at once", func(t *testing.T) {
		answerAndClose(t, e.machine, "HTTP/1.1 409 Conflict\r\nFly-Replay: elsewhere=true\r\nContent-Length: 0\r\n\r\n")
		run(t)
	})
	// a machine that took the whole body and failed is still the
	// machine's failure
	e = newTestEdge(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		panic(http.ErrAbortHandler)
	}, nil)
	for i := range 5 {
		if status, body, _ := e.do(t, "POST", "/upload", big, nil); status != http.StatusBadGateway || !strings.HasPrefix(body, "PU02: ") {
			t.Errorf("a machine that read the body and failed, run %d: %d %q, want 502 PU02", i, status, body)
		}
	}
}

// answerAndClose replaces machine m by one on the same address that
// reads a request's header, writes answer and closes the connection,
// whatever of the request it did not read.
func answerAndClose(t *testing.T, m *httptest.Server, answer string) {
	t.Helper()
	addr := m.Listener.Addr().String()
	m.Close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					if l, err := br.ReadString('\n'); err != nil || l == "\r\n" {
						break
					}
				}
				io.WriteString(c, answer)
			}()
		}
	}()
}

// TestReplayState: an instruction's state reaches the target as one
// field of fly-replay-src, whatever it holds (quoted when it holds a
// separator), and a state with control characters is an instruction the
// edge cannot read, PY05, not a failure of the target.
func TestReplayState(t *testing.T) {
	e := newTestEdge(t, func(w http.ResponseWriter, r *http.Request) {
		if src := r.Header.Get("Fly-Replay-Src"); src != "" {
			io.WriteString(w, src)
			return
		}
		instr, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", replayContentType)
		w.Write(instr)
	}, nil)
	for _, tc := range []struct {
		state, want string
	}{
		{"writes", ";state=writes"},
		{"a=b/c", ";state=a=b/c"},
		{"x;instance=evil;region=evil", `;state="x;instance=evil;region=evil"`},
		{`q"uote\ and, comma`, `;state="q\"uote\\ and, comma"`},
	} {
		instr, _ := json.Marshal(map[string]string{"state": tc.state})
		status, body, _ := e.do(t, "POST", "/", instr, nil)
		if status != http.StatusOK || !strings.HasSuffix(body, tc.want) || strings.Count(body, "instance=") != 1+strings.Count(tc.state, "instance=") {
			t.Errorf("state %q: %d %q, want 200 ending %q", tc.state, status, body, tc.want)
		}
	}
	for _, state := range []string{"a\nb", "a\rb", "nul\x00", "del\x7f"} {
		instr, _ := json.Marshal(map[string]string{"state": state})
		status, body, _ := e.do(t, "POST", "/", instr, nil)
		if status != http.StatusBadGateway || !strings.HasPrefix(body, "PY05: ") {
			t.Errorf("state %q: %d %q, want 502 PY05", state, status, body)
		}
	}
}

// TestReplayBudget: request bodies kept for fly-replay stay within the
// edge's budget and the app's: with room for two 32 KiB bodies, five
// held at once by the machine keep two; the other three reach the
// machine whole, and their fly-replay answers are 503 PY06. Once the
// requests are done, nothing is counted any more.
func TestReplayBudget(t *testing.T) {
	const n, size = 5, 32 << 10
	for _, tc := range []struct {
		name          string
		total, perApp int64
	}{
		{"edge", 2 * size, defaultReplayBuffersPerApp},
		{"app", defaultReplayBuffers, 2 * size},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			arrived, gate := 0, make(chan struct{})
			var held, heldApp int64
			e := newTestEdge(t, func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				if r.Header.Get("Fly-Replay-Src") != "" {
					fmt.Fprintf(w, "%d", len(body))
					return
				}
				// every request's body is read before any is answered
				mu.Lock()
				if arrived++; arrived == n {
					held, heldApp = replayBuffers.usage("web")
					close(gate)
				}
				mu.Unlock()
				<-gate
				w.Header().Set("Fly-Replay", "elsewhere=false")
				w.WriteHeader(http.StatusConflict)
			}, func(h *Headers) { h.ReplayBuffers, h.ReplayBuffersPerApp = tc.total, tc.perApp })
			results := make(chan string, n)
			for range n {
				go func() {
					status, body, _ := e.do(t, "POST", "/", bytes.Repeat([]byte("b"), size), nil)
					code, _, _ := strings.Cut(body, ":")
					results <- fmt.Sprintf("%d %s", status, code)
				}()
			}
			count := map[string]int{}
			for range n {
				count[<-results]++
			}
			if want := map[string]int{"200 32768": 2, "503 PY06": n - 2}; !maps.Equal(count, want) {
				t.Errorf("answers %v, want %v", count, want)
			}
			if held != 2*size || heldApp != 2*size {
				t.Errorf("kept while the machine held them: %d in all, %d for the app; want %d", held, heldApp, 2*size)
			}
			for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				all, app := replayBuffers.usage("web")
				if all == 0 && app == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after the requests: %d bytes counted in all, %d for the app", all, app)
				}
			}
		})
	}
}
