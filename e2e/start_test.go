package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddytls"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/flyedge/caddy-flyedge"
)

// briefEdge is the README's "Configuration in brief" edge as an operator
// copies it to production (an ACME issuer, on-demand TLS with permission
// fly), with the admin endpoint off, on loopback addresses and ports of
// the test's own, and storage in a folder of the test's.
const briefEdge = `{
	admin off
	storage file_system %[1]s
	log {
		level ERROR
	}
	fly {
		region iad
		base_domain edge.example.net
		app web {
			hostnames www.example.com
			service 8080 {
				port %[2]s http {
					force_https
				}
				port %[3]s tls http
			}
			machine 148ed193b95189 iad 127.0.9.1
		}
		app db {
			service 5432 {
				port %[4]s pg_tls
			}
			machine 2a6c5e8f0b1d94 fra 127.0.9.2
		}
	}
	fly_ips {
		shared_v4 127.0.0.1
		v4 127.31.0.0/24
		http_port %[2]s
		https_port %[3]s
	}
	fly_edge {
		ports %[2]s %[3]s %[4]s
		issuer acme {
			email ops@example.net
		}
	}
	on_demand_tls {
		permission fly
	}
}

http:// {
	bind fly/edge
	@app fly_app
	handle @app {
		force_https
		fly_headers
		reverse_proxy {
			dynamic fly
			lb_policy fly
			transport fly
		}
	}
	handle {
		abort
	}
}
`

// TestStartSameEveryTime validates and starts the production shapes of
// an edge 200 times each: the README's edge (ACME issuer, on-demand TLS
// with permission fly, admin off) and a real fly.toml through the
// flytoml adapter. Caddy provisions a config's apps in map order, so an
// edge whose start depends on which app comes first fails some of the
// runs; every run must succeed, and every started edge must put its
// on-demand certificate policy at the same place.
func TestStartSameEveryTime(t *testing.T) {
	const runs = 200
	dir := t.TempDir()
	p1, p2, p3 := freePort(), freePort(), freePort()
	brief, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(fmt.Sprintf(briefEdge, dir, p1, p2, p3)), nil)
	if err != nil {
		t.Fatal(err)
	}
	tomlFile := filepath.Join(moduleRoot, "..", "shared", "flytoml", "024-fly-apps-hello_elixir.toml")
	tomlBody, err := os.ReadFile(tomlFile)
	if err != nil {
		t.Fatal(err)
	}
	fromTOML, _, err := caddyconfig.GetAdapter("flytoml").Adapt(tomlBody, map[string]any{"filepath": tomlFile})
	if err != nil {
		t.Fatal(err)
	}
	// the adapter's edge keeps Caddy's default storage and admin: give
	// it the test's storage
	fromTOML = withStorage(t, fromTOML, dir)

	for _, tc := range []struct {
		name string
		cfg  []byte
	}{{"README edge", brief}, {"fly.toml", fromTOML}} {
		failed := 0
		var first string
		for range runs {
			var cfg caddy.Config
			if err := json.Unmarshal(tc.cfg, &cfg); err != nil {
				t.Fatal(err)
			}
			if err := caddy.Validate(&cfg); err != nil {
				if failed++; first == "" {
					first = err.Error()
				}
			}
		}
		if failed > 0 {
			t.Errorf("%s: caddy validate failed %d of %d times; first: %s", tc.name, failed, runs, first)
		}
	}

	failed, first, policies := 0, "", map[string]int{}
	for range runs {
		if err := caddy.Load(brief, true); err != nil {
			if failed++; first == "" {
				first = err.Error()
			}
			continue
		}
		policies[automationShape(t)]++
		if err := caddy.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	if failed > 0 {
		t.Errorf("README edge: caddy run (admin off) failed %d of %d times; first: %s", failed, runs, first)
	}
	if len(policies) != 1 {
		t.Errorf("the tls app's automation policies differ from start to start: %v", policies)
	}
	for shape := range policies {
		if !strings.Contains(shape, "on_demand=true") {
			t.Errorf("no on-demand policy for the edge: %s", shape)
		}
	}
}

// TestEdgeLeavesTrustStore: an edge whose certificates come from Caddy's
// internal CA does not install that CA's root into the host's trust
// stores (Caddy does so by default on start, which a server that serves
// other people's names must not), without skip_install_trust.
func TestEdgeLeavesTrustStore(t *testing.T) {
	requireCaddy(t)
	dir := t.TempDir()
	admin, port := freeAddr(), freePort()
	file := filepath.Join(dir, "Caddyfile")
	os.WriteFile(file, []byte(`{
	admin `+admin+`
	fly {
		base_domain trust.test
		app web {
			service 8080 {
				port `+port+` tls http
			}
		}
	}
	fly_ips {
		shared_v4 127.0.0.1
	}
	fly_edge {
		ports `+port+`
		issuer internal
	}
}
http:// {
	bind fly/edge
	abort
}
`), 0o600)
	log := runCaddy(t, dir, admin, "run", "--config", file)
	waitLog(t, log, "root certificate trust store installation disabled")
	if strings.Contains(log.String(), "installing root certificate") {
		t.Errorf("the edge installed its CA's root into the trust store:\n%s", log)
	}
}

// runCaddy starts a Caddy process of its own with home as its HOME, waits
// for its admin endpoint and stops it when the test ends; it returns the
// process's log.
func runCaddy(t *testing.T, home, admin string, args ...string) *logBuf {
	t.Helper()
	log := new(logBuf)
	p := exec.Command(caddyBin, args...)
	p.Env = caddyEnv(home)
	p.Stdout, p.Stderr = log, log
	p.SysProcAttr = dieWithTests()
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	ownProcess(p.Process.Pid)
	t.Cleanup(func() { stopProcess(p) })
	if err := waitAdmin(admin, 60*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, log)
	}
	return log
}

// waitLog waits up to 10 s for a process's log to say want.
func waitLog(t *testing.T, log *logBuf, want string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(log.String(), want); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the log does not say %q:\n%s", want, log)
		}
	}
}

// withStorage sets a config's storage to a folder.
func withStorage(t *testing.T, cfgJSON []byte, dir string) []byte {
	t.Helper()
	var cfg map[string]any
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["storage"] = map[string]any{"module": "file_system", "root": dir}
	out, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// automationShape describes the running tls app's automation policies:
// for each, its subjects and whether it is on demand.
func automationShape(t *testing.T) string {
	t.Helper()
	app, err := caddy.ActiveContext().App("tls")
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	for _, ap := range app.(*caddytls.TLS).Automation.Policies {
		parts = append(parts, fmt.Sprintf("%v on_demand=%v", ap.SubjectsRaw, ap.OnDemand))
	}
	return strings.Join(parts, "; ")
}
