package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
)

func TestRouting(t *testing.T) {
	e := startEdge(t, "", "")
	url := "https://web.edge.test:" + e.httpsPort + "/"
	for _, tc := range []struct {
		name    string
		hdr     map[string]string
		regions []string // acceptable machine regions
		machine string   // or an exact machine
	}{
		{name: "nearest is the edge region", regions: []string{"iad"}},
		{name: "prefer region", hdr: map[string]string{"Fly-Prefer-Region": "lhr"}, regions: []string{"lhr"}},
		{name: "prefer region list", hdr: map[string]string{"Fly-Prefer-Region": "nrt,syd,lhr"}, regions: []string{"syd"}},
		{name: "prefer country", hdr: map[string]string{"Fly-Prefer-Region": "gb"}, regions: []string{"lhr"}},
		{name: "prefer continent", hdr: map[string]string{"Fly-Prefer-Region": "oc"}, regions: []string{"syd"}},
		{name: "issue example iad,ord,us,na", hdr: map[string]string{"Fly-Prefer-Region": "iad,ord,us,na"}, regions: []string{"iad"}},
		{name: "prefer region nobody runs in", hdr: map[string]string{"Fly-Prefer-Region": "nrt"}, regions: []string{"iad"}},
		{name: "prefer instance", hdr: map[string]string{"Fly-Prefer-Instance-Id": "00000000000c01"}, machine: "00000000000c01"},
		{name: "force instance", hdr: map[string]string{"Fly-Force-Instance-Id": "00000000000d01", "Fly-Prefer-Region": "iad"}, machine: "00000000000d01"},
		{name: "force region", hdr: map[string]string{"Fly-Force-Region": "lhr", "Fly-Prefer-Region": "iad"}, regions: []string{"lhr"}},
		{name: "force continent", hdr: map[string]string{"Fly-Force-Region": "oc"}, regions: []string{"syd"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range []*http.Client{e.h1, e.h2} {
				for range 4 {
					resp, body, s := get(t, c, url, tc.hdr)
					if s == nil {
						t.Fatalf("status %d body %q", resp.StatusCode, body)
					}
					if tc.machine != "" && s.Machine != tc.machine {
						t.Fatalf("machine %s (%s), want %s", s.Machine, s.Region, tc.machine)
					}
					if tc.regions != nil && !slices.Contains(tc.regions, s.Region) {
						t.Fatalf("machine %s in %s, want a machine in %v", s.Machine, s.Region, tc.regions)
					}
					if got := s.Header.Get("Fly-Preferred-Instance-Unavailable"); got != "" {
						t.Fatalf("Fly-Preferred-Instance-Unavailable: %q on a request that got its machine", got)
					}
				}
			}
		})
	}

	t.Run("both iad machines share the load", func(t *testing.T) {
		seen := map[string]bool{}
		for range 40 {
			if _, _, s := get(t, e.h1, url, nil); s != nil {
				seen[s.Machine] = true
			}
		}
		if !seen["00000000000a01"] || !seen["00000000000a02"] || len(seen) != 2 {
			t.Fatalf("machines used: %v", seen)
		}
	})

	t.Run("force a region without machines", func(t *testing.T) {
		resp, body, s := get(t, e.h1, url, map[string]string{"Fly-Force-Region": "nrt"})
		if s != nil || resp.StatusCode != http.StatusServiceUnavailable || !strings.HasPrefix(body, "PR04: Fly-Force-Region: no machine of app web in nrt can take requests now") {
			t.Fatalf("status %d body %q machine %v", resp.StatusCode, body, s)
		}
	})

	t.Run("force unknown instance", func(t *testing.T) {
		for _, c := range []*http.Client{e.h1, e.h2} {
			resp, body, s := get(t, c, url, map[string]string{"Fly-Force-Instance-Id": "0123456789abcd"})
			if s != nil || resp.StatusCode != http.StatusNotFound || !strings.Contains(body, `"0123456789abcd" is not a machine of app web`) {
				t.Fatalf("status %d body %q machine %v", resp.StatusCode, body, s)
			}
		}
	})
}

// TestRoutingUnhealthy takes machines down and checks that active
// (service checks) and passive (reverse_proxy) health steer selection.
func TestRoutingUnhealthy(t *testing.T) {
	t.Run("active checks", func(t *testing.T) {
		e := startEdge(t, "check tcp {\n interval 1s\n timeout 100ms\n }", "")
		url := "https://web.edge.test:" + e.httpsPort + "/"
		lhr := "00000000000c01"
		e.machines[lhr].Close()
		waitFor(t, "the edge to mark the lhr machine unhealthy", func() bool {
			resp, _, _ := get(t, e.h1, url, map[string]string{"Fly-Force-Instance-Id": lhr})
			return resp.StatusCode == http.StatusServiceUnavailable
		})

		resp, body, s := get(t, e.h2, url, map[string]string{"Fly-Force-Instance-Id": lhr})
		if s != nil || resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "machine "+lhr+" of app web cannot take requests") {
			t.Fatalf("forced unhealthy machine: status %d body %q machine %v", resp.StatusCode, body, s)
		}
		_, body, s = get(t, e.h2, url, map[string]string{"Fly-Prefer-Instance-Id": lhr})
		if s == nil || s.Region != "iad" {
			t.Fatalf("preferred unhealthy machine: want the normal choice (iad), got %s", body)
		}
		if got := s.Header.Get("Fly-Preferred-Instance-Unavailable"); got != lhr {
			t.Fatalf("the app got Fly-Preferred-Instance-Unavailable %q, want %q", got, lhr)
		}
		_, body, s = get(t, e.h1, url, map[string]string{"Fly-Prefer-Region": "lhr,eu,syd"})
		if s == nil || s.Region != "syd" {
			t.Fatalf("preferred region without a healthy machine: want the next entry (syd), got %s", body)
		}

		// the edge region going down moves traffic to the nearest region
		e.machines["00000000000a01"].Close()
		e.machines["00000000000a02"].Close()
		waitFor(t, "traffic to move to ord", func() bool {
			_, _, s := get(t, e.h1, url, nil)
			return s != nil && s.Region == "ord"
		})
		for range 5 {
			if _, body, s := get(t, e.h1, url, nil); s == nil || s.Region != "ord" {
				t.Fatalf("iad down: want ord, the nearest region, got %s", body)
			}
		}
	})

	t.Run("passive checks", func(t *testing.T) {
		e := startEdge(t, "", "fail_duration 1m\n lb_retries 2")
		url := "https://web.edge.test:" + e.httpsPort + "/"
		syd := "00000000000d01"
		e.machines[syd].Close()
		// the first attempt fails to connect, counts a failure, and the
		// retry takes the normal choice
		_, body, s := get(t, e.h1, url, map[string]string{"Fly-Prefer-Instance-Id": syd})
		if s == nil || s.Region != "iad" {
			t.Fatalf("preferred dead machine: want a retry to iad, got %s", body)
		}
		if got := s.Header.Get("Fly-Preferred-Instance-Unavailable"); got != syd {
			t.Fatalf("the app got Fly-Preferred-Instance-Unavailable %q, want %q", got, syd)
		}
		resp, body, s := get(t, e.h1, url, map[string]string{"Fly-Force-Instance-Id": syd})
		if s != nil || resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, syd) {
			t.Fatalf("forced machine marked down by passive checks: status %d body %q", resp.StatusCode, body)
		}
	})
}

func TestConfigErrors(t *testing.T) {
	requireCaddy(t)
	base := `{
	admin ` + adminAddr + `
	persist_config off
	fly {
		%s
	}
}`
	for _, tc := range []struct{ name, fly, want string }{
		{"unknown edge region", "region zzz", `region: "zzz" is not in the region catalog`},
		{"unknown machine region", "app a {\n machine 00000000000001 mars 127.0.0.1\n }", `apps.a.machines[0].region: "mars" (machine 00000000000001) is not in the region catalog`},
		{"duplicate machine id", "app a {\n machine 00000000000001 iad 127.0.0.1\n }\n app b {\n machine 00000000000001 lhr 127.0.0.2\n }", `id 00000000000001 is already used by a machine of app`},
		{"bad port", "app a {\n service 8080 {\n port 99999 http\n }\n }", `apps.a.services[0].ports[0].port: 99999 is not a port number`},
		{"port not a number", "app a {\n service 8080 {\n port http http\n }\n }", `port "http": not a number`},
		{"force_https without http", "app a {\n service 8080 {\n port 5432 tls {\n force_https\n }\n }\n }", `force_https: port 5432 has handlers [tls]; force_https needs the http handler`},
		{"unknown option", "colour blue", `unrecognized fly option 'colour'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := load(t, strings.Replace(base, "%s", tc.fly, 1), "caddyfile")
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "400") {
				t.Fatalf("load error %v, want 400 containing %q", err, tc.want)
			}
		})
	}
}

// TestDeadMachines: without active checks or reverse_proxy tuning, a
// machine that refuses connections costs the client nothing while
// another machine can take the request; a forced one, or none left,
// gets an answer the client can read.
func TestDeadMachines(t *testing.T) {
	e := startEdge(t, "", "")
	url := "https://web.edge.test:" + e.httpsPort + "/"
	kill := func(ids ...string) {
		for _, id := range ids {
			e.machines[id].Close()
		}
	}
	const iad1, iad2, ord, lhr, syd = "00000000000a01", "00000000000a02", "00000000000b01", "00000000000c01", "00000000000d01"

	kill(syd)
	resp, body, s := get(t, e.h2, url, map[string]string{"Fly-Force-Instance-Id": syd})
	if s != nil || resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "machine "+syd+" of app web cannot take requests now") {
		t.Errorf("forced to a dead machine: status %d %q machine %v; want a readable 503", resp.StatusCode, body, s)
	}

	kill(lhr)
	resp, body, s = get(t, e.h2, url, map[string]string{"Fly-Prefer-Instance-Id": lhr})
	if s == nil || s.Region != "iad" || s.Header.Get("Fly-Preferred-Instance-Unavailable") != lhr {
		t.Errorf("preferring a dead machine: status %d %q; want the nearest live machine, told the preferred one was unavailable", resp.StatusCode, body)
	}

	kill(iad1, iad2) // the nearest two: the next is ord, the third try
	for i, c := range []*http.Client{e.h1, e.h2, e.h1, e.h2} {
		if resp, body, s := get(t, c, url, nil); s == nil || s.Machine != ord {
			t.Fatalf("request %d with iad dead: status %d %q; want ord's machine", i, resp.StatusCode, body)
		}
	}

	kill(ord)
	resp, body, s = get(t, e.h1, url, nil)
	if s != nil || resp.StatusCode != http.StatusBadGateway || !strings.HasPrefix(body, "PC01: the machines of app web refused the connection") {
		t.Errorf("every machine dead: status %d %q; want a readable 502 PC01", resp.StatusCode, body)
	}
}

// TestFailoverWarning: a site that sends requests to the apps' machines
// without transport fly, which holds the failover, is told at load what
// line to add.
func TestFailoverWarning(t *testing.T) {
	requireCaddy(t)
	const warning = `reverse_proxy sends requests to the apps' machines without \"transport fly\"`
	before := strings.Count(caddyLog.String(), warning)
	cfg := strings.Replace(edgeConfig, "transport fly", "", 1)
	mustLoad(t, fmt.Sprintf(cfg, freePort(), freePort(), freePort(), "", "", "", adminAddr, secureMachine.id))
	waitFor(t, "the warning", func() bool { return strings.Count(caddyLog.String(), warning) > before })
	if !strings.Contains(caddyLog.String(), `add the line \"transport fly\" to its block`) {
		t.Errorf("the warning does not name the line to add")
	}
	before = strings.Count(caddyLog.String(), warning)
	e := startEdge(t, "", "") // with transport fly: no warning
	if _, _, s := get(t, e.h1, "http://web.edge.test:"+e.httpPort+"/", nil); s == nil {
		t.Fatal("the edge does not serve")
	}
	if n := strings.Count(caddyLog.String(), warning); n != before {
		t.Errorf("a site with transport fly was warned about")
	}
}
