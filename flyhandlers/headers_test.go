package flyhandlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/routing"
)

// webApps are web (http on 80, tls+http on 443, force_https on 80) and
// api (tls+http on 443), without IP pools.
func webApps(t testing.TB) *routing.App {
	t.Helper()
	m := func(id string) []*routing.Machine {
		return []*routing.Machine{{ID: id, Region: "iad", Address: "127.0.62.1"}}
	}
	return newFly(t, map[string]*routing.Application{
		"web": {Services: []*routing.Service{{InternalPort: 8080, Ports: []*routing.Port{
			{Port: 80, Handlers: []string{"http"}, ForceHTTPS: true},
			{Port: 443, Handlers: []string{"tls", "http"}},
		}}}, Machines: m("00000000000b01")},
		"api": {Services: []*routing.Service{{InternalPort: 8080, Ports: []*routing.Port{
			{Port: 80, Handlers: []string{"http"}},
			{Port: 443, Handlers: []string{"tls", "http"}},
		}}}, Machines: m("00000000000b02")},
	})
}

// flyRequest is a request as Caddy's HTTP server hands it to handlers:
// from client 203.0.113.7, arrived on local, with the server's variables.
func flyRequest(target, local string, hdr map[string]string) (*http.Request, *httptest.ResponseRecorder) {
	r := httptest.NewRequest(http.MethodGet, target, nil)
	r.RemoteAddr = "203.0.113.7:40000"
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, net.TCPAddrFromAddrPort(netip.MustParseAddrPort(local))))
	w := httptest.NewRecorder()
	return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, &caddyhttp.Server{}), w
}

// recordNext is a next handler that keeps the request it got.
type recordNext struct {
	got *http.Request
	err error
}

func (n *recordNext) ServeHTTP(_ http.ResponseWriter, r *http.Request) error {
	n.got = r
	return n.err
}

func TestFlyHeaders(t *testing.T) {
	fly := webApps(t)
	h := &Headers{app: fly, region: fly.EdgeRegion(), logger: zap.NewNop()}
	next := new(recordNext)
	r, w := flyRequest("http://web.edge.test/x", "127.0.0.1:80", map[string]string{
		"Fly-Region":                         "evil",
		"Fly-Client-IP":                      "198.51.100.1",
		"Fly-Something":                      "spoofed",
		"Fly-Prefer-Region":                  "lhr",
		"Fly-Preferred-Instance-Unavailable": "spoofed",
		"X-Forwarded-For":                    "198.51.100.1",
		"X-Forwarded-Host":                   "evil.example",
		"X-Forwarded-Proto":                  "https",
	})
	if err := h.ServeHTTP(w, r, next); err != nil {
		t.Fatal(err)
	}
	if next.got == nil {
		t.Fatal("the request did not go on")
	}
	for k, want := range map[string]string{
		"Fly-Client-IP":                      "203.0.113.7",
		"X-Forwarded-For":                    "203.0.113.7",
		"X-Forwarded-Proto":                  "http",
		"X-Forwarded-Ssl":                    "off",
		"X-Forwarded-Port":                   "80",
		"Fly-Forwarded-Port":                 "80",
		"Fly-Region":                         "iad",
		"Fly-Prefer-Region":                  "lhr",
		"Fly-Something":                      "",
		"Fly-Preferred-Instance-Unavailable": "",
		"X-Forwarded-Host":                   "",
	} {
		if got := strings.Join(next.got.Header.Values(k), ","); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if app := fmt.Sprint(caddyhttp.GetVar(r.Context(), routing.AppVarKey)); app != "web" {
		t.Errorf("{http.vars.fly.app} = %q, want web", app)
	}
}

// TestFlyHeadersDenies: a host no app answers to never reaches an app;
// the client reads why.
func TestFlyHeadersDenies(t *testing.T) {
	fly := webApps(t)
	h := &Headers{app: fly, region: "iad", logger: zap.NewNop()}
	for _, tc := range []struct {
		name, target, local, body string
	}{
		{"unknown host", "http://nobody.edge.test/", "127.0.0.1:80", "no app answers to this host name"},
		{"no host on a shared port", "http://127.0.0.1/", "127.0.0.1:80", "no app answers to this host name"},
		{"port no app serves", "http://web.edge.test:8080/", "127.0.0.1:8080", "the app has no service on this port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := new(recordNext)
			r, w := flyRequest(tc.target, tc.local, nil)
			if err := h.ServeHTTP(w, r, next); err != nil {
				t.Fatal(err)
			}
			if next.got != nil || w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), tc.body) {
				t.Errorf("status %d %q, passed on %t; want 404 with %q", w.Code, w.Body, next.got != nil, tc.body)
			}
		})
	}
}

// TestFlyHeadersNoMachine: when the selection policy found no machine,
// the client reads why instead of an empty 502/503.
func TestFlyHeadersNoMachine(t *testing.T) {
	fly := webApps(t)
	h := &Headers{app: fly, region: "iad", logger: zap.NewNop()}
	for _, tc := range []struct {
		name    string
		outcome routing.Outcome
		status  int
		body    string
	}{
		{"forced unknown", routing.ForcedUnknown, 404, `Fly-Force-Instance-Id: "00000000000bad" is not a machine of app web`},
		{"forced unavailable", routing.ForcedUnavailable, 503, "cannot take requests now"},
		{"none available", routing.NoneAvailable, 503, "no machine of app web can take requests now"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, w := flyRequest("http://web.edge.test/", "127.0.0.1:80", map[string]string{"Fly-Force-Instance-Id": "00000000000bad"})
			next := &recordNext{err: caddyhttp.Error(http.StatusServiceUnavailable, errors.New("no upstreams available"))}
			// what the fly selection policy records when it picks no machine
			routing.SetUnroutable(r, tc.outcome)
			if err := h.ServeHTTP(w, r, next); err != nil {
				t.Fatal(err)
			}
			if w.Code != tc.status || !strings.Contains(w.Body.String(), tc.body) {
				t.Errorf("status %d %q, want %d with %q", w.Code, w.Body, tc.status, tc.body)
			}
		})
	}
}

func TestForceHTTPS(t *testing.T) {
	fly := webApps(t)
	f := &ForceHTTPS{app: fly}
	for _, tc := range []struct {
		name, target, local, location string
	}{
		{"plain http on a forcing port", "http://web.edge.test/docs?page=2", "127.0.0.1:80", "https://web.edge.test/docs?page=2"},
		{"port given by the client", "http://web.edge.test:80/a", "127.0.0.1:80", "https://web.edge.test/a"},
		{"an app that does not force", "http://api.edge.test/", "127.0.0.1:80", ""},
		{"no app", "http://nobody.edge.test/", "127.0.0.1:80", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := new(recordNext)
			r, w := flyRequest(tc.target, tc.local, nil)
			if err := f.ServeHTTP(w, r, next); err != nil {
				t.Fatal(err)
			}
			if tc.location == "" {
				if next.got == nil {
					t.Errorf("redirected to %q, want the request passed on", w.Header().Get("Location"))
				}
				return
			}
			if w.Code != http.StatusMovedPermanently || w.Header().Get("Location") != tc.location || next.got != nil {
				t.Errorf("status %d Location %q, want 301 to %s", w.Code, w.Header().Get("Location"), tc.location)
			}
		})
	}
}

// TestResponseHeaders: the edge's Fly-Request-Id and Via on responses,
// a service's header changes, and none of the edge's own with pristine.
func TestResponseHeaders(t *testing.T) {
	svc := func(resp *routing.HTTPResponse) *routing.Application {
		return &routing.Application{Services: []*routing.Service{{InternalPort: 8080,
			HTTPOptions: &routing.HTTPOptions{Response: resp},
			Ports:       []*routing.Port{{Port: 80, Handlers: []string{"http"}}}}}}
	}
	fly := newFly(t, map[string]*routing.Application{
		"plain": svc(nil),
		"ops": svc(&routing.HTTPResponse{Headers: map[string]any{
			"x-frame-options": "DENY", "Cache-Control": []any{"no-store", "private"}, "X-Powered-By": false}}),
		"pristine": svc(&routing.HTTPResponse{Pristine: true, Headers: map[string]any{"X-Edge": "no"}}),
	})
	for _, tc := range []struct {
		app  string
		want map[string]string
	}{
		{"plain", map[string]string{"Fly-Request-Id": "ID-iad", "Via": "2 flyedge", "X-Powered-By": "PHP"}},
		{"ops", map[string]string{"Fly-Request-Id": "ID-iad", "Via": "2 flyedge", "X-Frame-Options": "DENY", "Cache-Control": "no-store,private", "X-Powered-By": ""}},
		{"pristine", map[string]string{"Fly-Request-Id": "", "Via": "", "X-Edge": "no", "X-Powered-By": "PHP"}},
	} {
		t.Run(tc.app, func(t *testing.T) {
			r, _ := flyRequest("http://"+tc.app+".edge.test/", "127.0.0.1:80", nil)
			rt, err := fly.RouteForRequest(r)
			if err != nil {
				t.Fatal(err)
			}
			rec := httptest.NewRecorder()
			fw := newFlyResponse(rec, rt, "ID-iad", true, nil)
			// as reverse_proxy leaves the header before writing it
			fw.Header()["Via"] = []string{"2.0 Caddy"}
			fw.Header().Set("X-Powered-By", "PHP")
			fw.Header().Set("Cache-Control", "max-age=600")
			fw.Write([]byte("body"))
			for k, want := range tc.want {
				if got := strings.Join(rec.Result().Header[k], ","); got != want {
					t.Errorf("%s: %q, want %q", k, got, want)
				}
			}
		})
	}
}

// TestErrorBodies: an error the edge causes reads as plain text, or as
// JSON for a client that asks for JSON, with its code and request ID.
func TestErrorBodies(t *testing.T) {
	fly := webApps(t)
	h := &Headers{app: fly, region: "iad", logger: zap.NewNop()}
	for _, accept := range []string{"", "text/html,application/json", "application/json", "application/json;q=0.9, */*"} {
		r, w := flyRequest("http://nobody.edge.test/", "127.0.0.1:80", map[string]string{"Accept": accept})
		if err := h.ServeHTTP(w, r, new(recordNext)); err != nil {
			t.Fatal(err)
		}
		id := w.Header().Get("Fly-Request-Id")
		if !strings.HasSuffix(id, "-iad") {
			t.Errorf("Accept %q: Fly-Request-Id %q", accept, id)
		}
		if strings.HasPrefix(accept, "application/json") {
			var e struct {
				Code, Error string
				RequestID   string `json:"request_id"`
			}
			if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Code != "PA01" || e.RequestID != id ||
				w.Header().Get("Content-Type") != "application/json" || !strings.Contains(e.Error, "no app answers") {
				t.Errorf("Accept %q: %q (%v), want JSON with PA01 and the request ID", accept, w.Body, err)
			}
			continue
		}
		if want := "PA01: no app answers to this host name: \"nobody.edge.test\"\nrequest id: " + id + "\n"; w.Body.String() != want {
			t.Errorf("Accept %q: %q, want %q", accept, w.Body, want)
		}
	}
}

// replayOnce asks for a replay on its first pass, leaving headers of its
// own, and answers the second.
type replayOnce struct{ passes int }

func (n *replayOnce) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	n.passes++
	if n.passes == 1 {
		w.Header().Set("X-Replayed-Pass", "must not reach the client")
		w.Header().Set("Server", "the machine that replayed")
		w.Header().Set("Fly-Replay", "region=iad")
		w.WriteHeader(http.StatusConflict)
		_, _ = w.Write([]byte("must not reach the client"))
		w.Header().Set("X-After-Intercept", "must not reach the client")
		return nil
	}
	w.Header().Set("X-Answer", "yes")
	_, err := w.Write([]byte("answer"))
	return err
}

// TestReplayLeavesNoHeader: the client gets none of the headers of a
// response that asked for a replay, and keeps those set before
// fly_headers ran.
func TestReplayLeavesNoHeader(t *testing.T) {
	h := &Headers{app: webApps(t), region: "iad", logger: zap.NewNop()}
	r, rec := flyRequest("http://web.edge.test/x", "127.0.0.1:80", nil)
	rec.Header().Set("Server", "Caddy") // as Caddy's server does first
	next := &replayOnce{}
	if err := h.ServeHTTP(rec, r, next); err != nil {
		t.Fatal(err)
	}
	res := rec.Result()
	if next.passes != 2 || res.StatusCode != http.StatusOK || rec.Body.String() != "answer" {
		t.Fatalf("%d passes, %d %q; want 2 passes, 200 answer", next.passes, res.StatusCode, rec.Body.String())
	}
	for k, want := range map[string]string{"X-Replayed-Pass": "", "Fly-Replay": "", "X-After-Intercept": "", "Server": "Caddy", "X-Answer": "yes"} {
		if got := strings.Join(res.Header[k], ","); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
}

// TestForwardedFromUntrusted: Forwarded and X-Real-IP from a client that
// is no trusted proxy never reach the machine, as X-Forwarded-For does
// not: the machine reads the client address the edge saw, not one the
// client made up.
func TestForwardedFromUntrusted(t *testing.T) {
	e := newTestEdge(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "forwarded=%q real-ip=%q xff=%q", r.Header.Values("Forwarded"), r.Header.Values("X-Real-Ip"), r.Header.Values("X-Forwarded-For"))
	}, nil)
	status, body, _ := e.do(t, "GET", "/", nil, map[string]string{
		"Forwarded": "for=198.51.100.1;proto=https", "X-Real-IP": "198.51.100.1", "X-Forwarded-For": "198.51.100.1"})
	if want := `forwarded=[] real-ip=[] xff=["127.0.0.1"]`; status != http.StatusOK || body != want {
		t.Errorf("%d %s; want 200 %s", status, body, want)
	}
}

func TestHeadersCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		in            string
		total, perApp int64
		err           bool
	}{
		{"fly_headers", 0, 0, false},
		{"fly_headers {\n replay_buffers 64MiB\n replay_buffers_per_app 1000000\n}", 64 << 20, 1000000, false},
		{"fly_headers {\n replay_buffers\n}", 0, 0, true},
		{"fly_headers {\n replay_buffers lots\n}", 0, 0, true},
		{"fly_headers {\n replay_buffers 0\n}", 0, 0, true},
		{"fly_headers {\n other 1\n}", 0, 0, true},
	} {
		h := new(Headers)
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if (err != nil) != tc.err || h.ReplayBuffers != tc.total || h.ReplayBuffersPerApp != tc.perApp {
			t.Errorf("%q: %d, %d, %v", tc.in, h.ReplayBuffers, h.ReplayBuffersPerApp, err)
		}
	}
}
