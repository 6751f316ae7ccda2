package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// replayMachine is a machine of the replay tests: it answers a request
// with what it received, unless its path asks it to reply with a
// fly-replay instruction.
type replayMachine struct {
	id, region, ip, app string
}

// replaySeen is what a replay machine reports.
type replaySeen struct {
	Machine, Region, App, Method, URI, Body string
	Src, Failed, Set, Drop, Via, RequestID  string
}

var (
	routerIAD  = replayMachine{"00000000000e01", "iad", "127.0.64.1", "router"}
	routerLHR  = replayMachine{"00000000000e02", "lhr", "127.0.64.2", "router"}
	routerIAD2 = replayMachine{"00000000000e05", "iad", "127.0.64.5", "router"}
	worker     = replayMachine{"00000000000e03", "iad", "127.0.64.3", "worker"}
	stranger   = replayMachine{"00000000000e04", "iad", "127.0.64.4", "stranger"}
)

// serve answers as the test's path says.
func (m replayMachine) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	replayTo := func(v string) {
		w.Header().Set("Fly-Replay", v)
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusConflict) // any status: the client must never see it
		w.Write([]byte("replay answer the client must not see"))
	}
	src := r.Header.Get("Fly-Replay-Src")
	if m.app == "router" {
		switch {
		case r.URL.Path == "/region" && m.region != "lhr":
			replayTo(`region=lhr;state=from-iad`)
			return
		case r.URL.Path == "/regions" && m.region != "lhr":
			replayTo(`region="nrt,gb,any"`)
			return
		case r.URL.Path == "/instance" && src == "":
			replayTo("instance=" + routerLHR.id)
			return
		case r.URL.Path == "/app":
			replayTo("app=worker;state=to-worker")
			return
		case r.URL.Path == "/json":
			w.Header().Set("Content-Type", "application/vnd.fly.replay+json")
			json.NewEncoder(w).Encode(map[string]any{"app": "worker", "transform": map[string]any{
				"path": "/rewritten?x=1", "set_headers": []map[string]string{{"name": "X-Set", "value": "yes"}},
				"delete_headers": []string{"X-Drop"}}})
			return
		case r.URL.Path == "/chain" && m.region == "iad":
			replayTo("region=lhr")
			return
		case r.URL.Path == "/chain":
			replayTo("app=worker")
			return
		case r.URL.Path == "/loop":
			replayTo("elsewhere=false")
			return
		case r.URL.Path == "/elsewhere" && src == "":
			replayTo("elsewhere=true;region=iad")
			return
		case r.URL.Path == "/dead" && r.Header.Get("Fly-Replay-Failed") == "":
			replayTo("app=deadapp;fallback=force_self")
			return
		case r.URL.Path == "/dead-again":
			replayTo("app=deadapp;fallback=prefer_self")
			return
		case r.URL.Path == "/dead-nofallback":
			replayTo("app=deadapp")
			return
		case r.URL.Path == "/stranger":
			replayTo("app=stranger")
			return
		case r.URL.Path == "/bad":
			replayTo("fallback=sometimes")
			return
		case r.URL.Path == "/bad-syntax":
			replayTo("iad")
			return
		case r.URL.Path == "/bad-json":
			w.Header().Set("Content-Type", "application/vnd.fly.replay+json")
			w.Write([]byte(`{"elsewhere": "yes"}`))
			return
		case r.URL.Path == "/trailer":
			w.Header().Set("Trailer", "X-Result")
			w.Write([]byte("streamed"))
			w.Header().Set("X-Result", "done")
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(replaySeen{m.id, m.region, m.app, r.Method, r.RequestURI, string(body),
		src, r.Header.Get("Fly-Replay-Failed"), r.Header.Get("X-Set"), r.Header.Get("X-Drop"), r.Header.Get("Via"), r.Header.Get("Fly-Request-Id")})
}

const replayConfig = `{
	admin %[1]s
	persist_config off
	auto_https off
	fly {
		region iad
		base_domain replay.test
		app router {
			org acme
			service %[3]s {
				port %[2]s http
			}
			machine %[4]s iad %[5]s
			machine %[6]s lhr %[7]s
			machine %[12]s iad %[13]s
		}
		app worker {
			org acme
			service %[3]s {
				port %[2]s http
			}
			machine %[8]s iad %[9]s
		}
		app deadapp {
			org acme
			service %[3]s {
				port %[2]s http
			}
			machine 00000000000dea iad 127.0.64.99
		}
		app stranger {
			org other
			service %[3]s {
				port %[2]s http
			}
			machine %[10]s iad %[11]s
		}
	}
}
http://:%[2]s {
	fly_headers
	reverse_proxy {
		dynamic fly
		lb_policy fly
		transport fly
	}
}
`

// TestFlyReplay: an app's fly-replay answer sends the same request
// (method, headers, body) to the machine, region or app it names; the
// client sees only the final answer.
func TestFlyReplay(t *testing.T) {
	requireCaddy(t)
	port, mport := freePort(), freePort()
	for _, m := range []replayMachine{routerIAD, routerLHR, routerIAD2, worker, stranger} {
		ln, err := net.Listen("tcp", net.JoinHostPort(m.ip, mport))
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(m.serve)}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	mustLoad(t, fmt.Sprintf(replayConfig, adminAddr, port, mport, routerIAD.id, routerIAD.ip, routerLHR.id, routerLHR.ip,
		worker.id, worker.ip, stranger.id, stranger.ip, routerIAD2.id, routerIAD2.ip))
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	send := func(method, path string, body []byte, hdr map[string]string) (*http.Response, string, *replaySeen) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://router.replay.test:"+port+path, bytes.NewReader(body))
		req.Host = "router.replay.test"
		req.URL.Host = "127.0.0.1:" + port
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var s replaySeen
		if json.Unmarshal(b, &s) != nil || s.Machine == "" {
			return resp, string(b), nil
		}
		return resp, string(b), &s
	}
	post := bytes.Repeat([]byte("0123456789abcdef"), 64) // 1 KiB

	t.Run("to a region, with state, body and method", func(t *testing.T) {
		resp, body, s := send("POST", "/region", post, nil)
		if s == nil || s.Machine != routerLHR.id || s.Method != "POST" || s.Body != string(post) {
			t.Fatalf("status %d %q; want lhr's machine with the POST body", resp.StatusCode, body)
		}
		if !strings.HasPrefix(s.Src, "instance=") || !strings.Contains(s.Src, ";region=iad;t=") || !strings.HasSuffix(s.Src, ";state=from-iad") {
			t.Errorf("fly-replay-src %q, want the iad machine that replayed, its region, a time and the state", s.Src)
		}
		if strings.Contains(body, "must not see") || resp.StatusCode != http.StatusOK || !strings.HasSuffix(resp.Header.Get("Fly-Request-Id"), "-iad") {
			t.Errorf("the client got %d %q", resp.StatusCode, body)
		}
	})
	t.Run("to a list of regions with an alias", func(t *testing.T) {
		if _, body, s := send("GET", "/regions", nil, nil); s == nil || s.Machine != routerLHR.id {
			t.Errorf("region=\"nrt,gb,any\": %q, want lhr's machine (gb)", body)
		}
	})
	t.Run("to an instance", func(t *testing.T) {
		if _, body, s := send("GET", "/instance", nil, nil); s == nil || s.Machine != routerLHR.id {
			t.Errorf("%q, want the named instance", body)
		}
	})
	t.Run("to another app", func(t *testing.T) {
		_, body, s := send("PUT", "/app", post, nil)
		if s == nil || s.App != "worker" || s.Method != "PUT" || s.Body != string(post) || !strings.HasSuffix(s.Src, ";state=to-worker") {
			t.Errorf("%q, want worker with the PUT body and the state", body)
		}
	})
	t.Run("JSON form with transform", func(t *testing.T) {
		_, body, s := send("POST", "/json?orig=1", post, map[string]string{"X-Drop": "gone", "X-Set": "no"})
		if s == nil || s.App != "worker" || s.URI != "/rewritten?x=1" || s.Set != "yes" || s.Drop != "" || s.Body != string(post) {
			t.Errorf("%q, want worker with the new path and headers and the body", body)
		}
	})
	t.Run("chained", func(t *testing.T) {
		if _, body, s := send("GET", "/chain", nil, nil); s == nil || s.App != "worker" || !strings.Contains(s.Src, ";region=lhr;") {
			t.Errorf("%q, want worker, replayed to by the lhr machine", body)
		}
	})
	t.Run("elsewhere", func(t *testing.T) {
		for range 4 {
			_, body, s := send("GET", "/elsewhere", nil, nil)
			if s == nil || !strings.HasPrefix(s.Src, "instance=") || strings.TrimPrefix(strings.Split(s.Src, ";")[0], "instance=") == s.Machine {
				t.Fatalf("%q, want the other iad machine", body)
			}
		}
	})
	t.Run("fallback to the machine that asked", func(t *testing.T) {
		_, body, s := send("GET", "/dead", nil, nil)
		if s == nil || s.App != "router" || !strings.HasPrefix(s.Failed, "code=PC01;app=deadapp") {
			t.Errorf("%q, want the replaying machine again, told in fly-replay-failed", body)
		}
	})
	for _, tc := range []struct {
		name, method, path string
		body               []byte
		status             int
		prefix             string
	}{
		{"without fallback, the client reads why", "GET", "/dead-nofallback", nil, 502, "PY02: fly-replay to app deadapp failed: "},
		{"another organization's app", "GET", "/stranger", nil, 502, "PY01: fly-replay: app router may not replay to app stranger"},
		{"a body too large to replay", "POST", "/app", bytes.Repeat([]byte("x"), 2<<20), 413, "PY03: fly-replay: the request body is over 1048576 bytes"},
		{"more than 10 replays", "GET", "/loop", nil, 508, "PY04: fly-replay: replayed 10 times"},
		{"asked again after the fallback", "GET", "/dead-again", nil, 508, "PY04: fly-replay: a request that fell back"},
		{"an instruction the edge cannot read", "GET", "/bad", nil, 502, `PY05: fly-replay: fallback="sometimes"`},
		{"a header that is no instruction", "GET", "/bad-syntax", nil, 502, `PY05: fly-replay: "iad": want name=value fields`},
		{"JSON that is no instruction", "GET", "/bad-json", nil, 502, "PY05: fly-replay JSON: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body, s := send(tc.method, tc.path, tc.body, nil)
			if s != nil || resp.StatusCode != tc.status || !strings.HasPrefix(body, tc.prefix) {
				t.Errorf("status %d %q; want %d %q", resp.StatusCode, body, tc.status, tc.prefix)
			}
		})
	}
	t.Run("trailers reach the client", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://127.0.0.1:"+port+"/trailer", nil)
		req.Host = "router.replay.test"
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "streamed" || resp.Trailer.Get("X-Result") != "done" {
			t.Errorf("body %q, trailer %q; want the machine's trailer", b, resp.Trailer.Get("X-Result"))
		}
	})
	// each instruction counted for the app that gave it
	families := scrape(t)
	for result, want := range map[string]func(float64) bool{
		"replayed": func(v float64) bool { return v >= 9 },
		"fallback": func(v float64) bool { return v == 2 },
		"failed":   func(v float64) bool { return v == 8 },
	} {
		if v, _ := value(families, "caddy_fly_http_replays_total", map[string]string{"app": "router", "result": result}); !want(v) {
			t.Errorf("caddy_fly_http_replays_total{app=router,result=%s} = %v", result, v)
		}
	}
}
