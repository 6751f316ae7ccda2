package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestProcessGroups: an app deployed from a fly.toml with [processes] web
// and worker, whose [http_service] is web's, and machines of both groups
// registered with `caddy fly machine add --process-group`: every request
// reaches a web machine, never a worker, though a worker is the nearest
// (in the edge's region); a request forcing a worker machine gets PR02,
// as a machine that is none of the service's.
func TestProcessGroups(t *testing.T) {
	e := startIPEdge(t)
	web := []testMachine{{"00000000009a01", "ord", "127.0.47.1"}, {"00000000009a02", "lhr", "127.0.47.2"}}
	worker := []testMachine{{"00000000009b01", "iad", "127.0.47.3"}, {"00000000009b02", "iad", "127.0.47.4"}}
	startMachines(t, e.machinePort, append(append([]testMachine{}, web...), worker...)...)

	file := filepath.Join(t.TempDir(), "fly.toml")
	doc := `app = 'jobs'
primary_region = 'iad'

[processes]
  web = 'bin/rails server'
  worker = 'bin/jobs'

[http_service]
  internal_port = ` + e.machinePort + `
  processes = ['web']
`
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := fly(t, adminAddr, "deploy", "-c", file)
	if err != nil || strings.Contains(out, "warning") {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	// the web service has no machine: deploy says which group needs one
	if want := "App jobs has no machines in process groups [web] yet"; !strings.Contains(out, want) || !strings.Contains(out, "--process-group web") {
		t.Errorf("deploy does not say %q with --process-group web:\n%s", want, out)
	}
	allocate(t, adminAddr, "jobs", "shared_v4")
	for group, ms := range map[string][]testMachine{"web": web, "worker": worker} {
		for _, m := range ms {
			out, err := fly(t, adminAddr, "machine", "add", "-a", "jobs", "--id", m.id, "--region", m.region, "--machine-address", m.ip, "--process-group", group)
			if err != nil || !strings.Contains(out, "process group "+group) {
				t.Fatalf("machine add --process-group %s: %v\n%s", group, err, out)
			}
		}
	}
	out, err = fly(t, adminAddr, "machine", "list", "-a", "jobs")
	if err != nil || !strings.Contains(out, "PROCESS GROUP") || strings.Count(out, "worker") != 2 || strings.Count(out, "web") != 2 {
		t.Fatalf("machine list: %v\n%s", err, out)
	}

	shared := via(e.roots, sharedV4)
	url := "https://jobs." + e.domain + ":" + e.httpsPort + "/"
	seen := map[string]int{}
	for range 50 {
		resp, body, s := get(t, shared, url, nil)
		if s == nil {
			t.Fatalf("status %d body %q: the request reached no machine", resp.StatusCode, body)
		}
		seen[s.Machine]++
	}
	for _, m := range worker {
		if seen[m.id] > 0 {
			t.Errorf("worker machine %s got %d of 50 web requests", m.id, seen[m.id])
		}
	}
	if seen[web[0].id]+seen[web[1].id] != 50 {
		t.Errorf("requests by machine: %v, want all 50 on the web machines", seen)
	}

	resp, body, s := get(t, shared, url, map[string]string{"Fly-Force-Instance-Id": worker[0].id})
	if s != nil || resp.StatusCode != http.StatusNotFound || !strings.HasPrefix(body, "PR02: ") || !strings.Contains(body, "in process groups [web]") {
		t.Errorf("forcing a worker machine: status %d body %q machine %v, want 404 PR02", resp.StatusCode, body, s)
	}
}
