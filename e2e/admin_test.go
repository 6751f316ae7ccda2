package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
)

// apps created at run time, and their machines
var (
	apiWeb = testMachine{"0000000000a501", "iad", "127.0.58.1"}
	apiTCP = testMachine{"0000000000a502", "iad", "127.0.58.2"}
)

// TestAppsThroughAPI: apps created, changed and destroyed through the
// admin API and the CLI serve real traffic at once, without a config
// load, on the edge that took the change and on another edge sharing its
// storage; destroying one releases its addresses and closes its
// connections; the config's apps stay the config's.
func TestAppsThroughAPI(t *testing.T) {
	e := startIPEdge(t)
	node := startStorageNode(t, e.storage) // another edge on the same storage
	startMachines(t, e.machinePort, apiWeb)
	sinks := startSinks(t, e.rawPort, 0, apiTCP)
	loads := strings.Count(caddyLog.String(), "admin endpoint started") // once per config load
	if loads == 0 {
		t.Fatal("the shared Caddy's log does not show its config loads")
	}

	// an HTTP app, created with the CLI on this edge
	def := filepath.Join(t.TempDir(), "web2.json")
	os.WriteFile(def, fmt.Appendf(nil, `{"services":[{"internal_port":%s,"ports":[{"port":%s,"handlers":["http"]},{"port":%s,"handlers":["tls","http"]}]}]}`,
		e.machinePort, e.httpPort, e.httpsPort), 0o600)
	if out, err := fly(t, adminAddr, "apps", "create", "web2", "--from", def); err != nil || !strings.Contains(out, "New app created: web2") {
		t.Fatalf("apps create: %v\n%s", err, out)
	}
	if out, err := fly(t, adminAddr, "apps", "create", "web2", "--from", def); err == nil || !strings.Contains(out, "exists already") {
		t.Errorf("creating web2 twice: %v\n%s", err, out)
	}
	allocate(t, adminAddr, "web2", "shared_v4")
	if out, err := fly(t, adminAddr, "machine", "add", "-a", "web2", "--id", apiWeb.id, "--region", apiWeb.region, "--machine-address", apiWeb.ip); err != nil {
		t.Fatalf("machine add: %v\n%s", err, out)
	}
	shared := via(e.roots, sharedV4)
	for _, url := range []string{"http://web2." + e.domain + ":" + e.httpPort + "/", "https://web2." + e.domain + ":" + e.httpsPort + "/"} {
		if got, err := machineOf(shared, url); err != nil || got != apiWeb.id {
			t.Errorf("%s right after the 2xx: machine %q, %v; want %s", url, got, err, apiWeb.id)
		}
	}
	// the other edge sees it
	waitFor(t, "the other edge to list web2", func() bool {
		var apps []struct{ Name, Source string }
		call(t, node.admin, http.MethodGet, "/fly/apps", "", &apps)
		for _, a := range apps {
			if a.Name == "web2" && a.Source == "api" {
				return true
			}
		}
		return false
	})

	// a TCP app, created on the other edge, serves here
	status, body := call(t, node.admin, http.MethodPut, "/fly/apps/tcp2",
		fmt.Sprintf(`{"services":[{"internal_port":%s,"ports":[{"port":%s}]}]}`, e.rawPort, e.httpsPort), nil)
	if status != http.StatusCreated {
		t.Fatalf("PUT tcp2 on the other edge: %d %s", status, body)
	}
	if status, body := call(t, node.admin, http.MethodPost, "/fly/apps/tcp2/machines", fmt.Sprintf(`{"id":%q,"region":"iad","address":%q}`, apiTCP.id, apiTCP.ip), nil); status != http.StatusCreated {
		t.Fatalf("machine of tcp2: %d %s", status, body)
	}
	var v4 assignment
	if status, body := call(t, node.admin, http.MethodPost, "/fly/apps/tcp2/ips", `{"type":"v4"}`, &v4); status != http.StatusCreated {
		t.Fatalf("v4 for tcp2: %d %s", status, body)
	}
	waitFor(t, "this edge to serve tcp2", func() bool {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(v4.Address, e.httpsPort), time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write([]byte("ping"))
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		return strings.HasPrefix(string(b), apiTCP.id+" ")
	})

	// list, from the CLI: where each app comes from
	out, err := fly(t, adminAddr, "apps", "list")
	if err != nil {
		t.Fatal(err, out)
	}
	for _, want := range []string{"web      config", "web2     api", "tcp2     api"} {
		if !strings.Contains(strings.Join(strings.Fields(out), " "), strings.Join(strings.Fields(want), " ")) {
			t.Errorf("apps list lacks %q:\n%s", want, out)
		}
	}

	// refusals answer JSON with the field or the reason
	for _, tc := range []struct {
		path, body string
		status     int
		want       string
	}{
		{"/fly/apps/web", `{}`, 409, "defined in the config"},
		{"/fly/apps/web3", `{"services":[{"internal_port":0,"ports":[{"port":80}]}]}`, 400, "apps.web3.services[0].internal_port"},
		{"/fly/apps/web3", `{"servics":[]}`, 400, "servics"},
	} {
		if status, body := call(t, adminAddr, http.MethodPut, tc.path, tc.body, nil); status != tc.status || !strings.Contains(body, tc.want) || !strings.HasPrefix(body, `{"error":`) {
			t.Errorf("PUT %s %s: %d %s; want %d naming %q", tc.path, tc.body, status, body, tc.status, tc.want)
		}
	}
	if status, body := call(t, adminAddr, http.MethodDelete, "/fly/apps/web", "", nil); status != 409 {
		t.Errorf("DELETE a config app: %d %s", status, body)
	}

	// an update takes effect at once: web2 loses its plain HTTP port
	status, body = call(t, adminAddr, http.MethodPut, "/fly/apps/web2",
		fmt.Sprintf(`{"services":[{"internal_port":%s,"ports":[{"port":%s,"handlers":["tls","http"]}]}]}`, e.machinePort, e.httpsPort), nil)
	if status != http.StatusOK {
		t.Fatalf("updating web2: %d %s", status, body)
	}
	if got, err := machineOf(shared, "http://web2."+e.domain+":"+e.httpPort+"/"); err == nil {
		t.Errorf("web2's removed port still reaches machine %s", got)
	}
	if got, err := machineOf(shared, "https://web2."+e.domain+":"+e.httpsPort+"/"); err != nil || got != apiWeb.id {
		t.Errorf("web2's kept port: %q, %v", got, err)
	}

	// destroying tcp2 closes its open connection and releases its address
	dialed := sinks[apiTCP.id].accepted.Load()
	c, err := net.DialTimeout("tcp", net.JoinHostPort(v4.Address, e.httpsPort), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("still here"))
	waitFor(t, "the edge to connect tcp2's machine", func() bool { return sinks[apiTCP.id].accepted.Load() > dialed })
	if out, err := fly(t, adminAddr, "apps", "destroy", "tcp2"); err != nil || !strings.Contains(out, "Destroyed app tcp2") {
		t.Fatalf("apps destroy: %v\n%s", err, out)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("tcp2's open connection after the destroy: read %d, %v; want EOF", n, err)
	}
	var ips []assignment
	call(t, adminAddr, http.MethodGet, "/fly/ips", "", &ips)
	for _, a := range ips {
		if a.App == "tcp2" {
			t.Errorf("tcp2 still holds %s", a.Address)
		}
	}
	if c2, err := net.DialTimeout("tcp", net.JoinHostPort(v4.Address, e.httpsPort), time.Second); err == nil {
		c2.SetDeadline(time.Now().Add(2 * time.Second))
		c2.Write([]byte("ping"))
		c2.(*net.TCPConn).CloseWrite()
		if b, _ := io.ReadAll(c2); len(b) > 0 {
			t.Errorf("a new connection to the released address got %q", b)
		}
		c2.Close()
	}
	waitFor(t, "the other edge to forget tcp2", func() bool {
		status, _ := call(t, node.admin, http.MethodGet, "/fly/apps/tcp2", "", nil)
		return status == http.StatusNotFound
	})
	if n := strings.Count(caddyLog.String(), "admin endpoint started"); n != loads {
		t.Errorf("%d config loads happened", n-loads)
	}
}

// TestNullEntries: a null where the config has a list of objects
// (services, ports, checks, machines) is refused with its field on every
// way in: PUT /fly/apps/{app} answers 400, POST /load answers 400 and
// the admin endpoint keeps serving, and caddy validate says which field
// (exit status 1, no stack).
func TestNullEntries(t *testing.T) {
	startIPEdge(t)
	svc := `{"internal_port":8080,"ports":[{"port":80}]}`
	for _, tc := range []struct{ body, want string }{
		{`{"services":[null]}`, "apps.nul.services[0]: null"},
		{`{"services":[{"internal_port":8080,"ports":[null]}]}`, "apps.nul.services[0].ports[0]: null"},
		{`{"services":[{"internal_port":8080,"ports":[{"port":80}],"checks":[null]}]}`, "apps.nul.services[0].checks[0]: null"},
	} {
		if status, body := call(t, adminAddr, http.MethodPut, "/fly/apps/nul", tc.body, nil); status != 400 || !strings.Contains(body, tc.want) {
			t.Errorf("PUT %s: %d %s; want 400 naming %q", tc.body, status, body, tc.want)
		}
	}

	dir := t.TempDir()
	for i, tc := range []struct{ app, want string }{
		{`{"services":[null]}`, "apps.nul.services[0]: null"},
		{`{"services":[{"internal_port":8080,"ports":[{"port":80},null]}]}`, "apps.nul.services[0].ports[1]: null"},
		{`{"services":[` + svc[:len(svc)-1] + `,"checks":[null]}]}`, "apps.nul.services[0].checks[0]: null"},
		{`{"machines":[null]}`, "apps.nul.machines[0]: null"},
	} {
		config := `{"admin":{"listen":"` + adminAddr + `","config":{"persist":false}},"apps":{"fly":{"region":"iad","base_domain":"nul.test","apps":{"nul":` + tc.app + `}}}}`
		err := load(t, config, "")
		if err == nil || !strings.HasPrefix(err.Error(), "400: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("POST /load with %s: %v; want 400 naming %q", tc.app, err, tc.want)
		}
		if status, body := call(t, adminAddr, http.MethodGet, "/fly/apps", "", nil); status != 200 {
			t.Fatalf("the admin endpoint after that load: %d %s", status, body)
		}

		file := filepath.Join(dir, fmt.Sprintf("null%d.json", i))
		os.WriteFile(file, []byte(config), 0o600)
		cmd := exec.Command(caddyBin, "validate", "--config", file)
		cmd.Env = caddyEnv(filepath.Join(dir, "home"))
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), tc.want) || strings.Contains(string(out), "goroutine ") {
			t.Errorf("caddy validate with %s: %v; want exit status 1 naming %q\n%s", tc.app, err, tc.want, out)
		}
	}
}

// TestAdminAPIErrors: the admin API refuses bad calls with the statuses
// and JSON of the contract, the CLI prints the message and exits
// non-zero, and /fly/ is not served on the public ports.
func TestAdminAPIErrors(t *testing.T) {
	e := startIPEdge(t)
	allocate(t, adminAddr, "web", "shared_v4")
	allocate(t, adminAddr, "web", "v6") // the pool's only address
	for _, tc := range []struct {
		method, path, body string
		status             int
		msg                string
	}{
		{"POST", "/fly/apps/web/ips", `{"type":"v5"}`, 400, `type: \"v5\" (want v6, shared_v4 or v4)`},
		{"POST", "/fly/apps/web/ips", `{"type":`, 400, "request body"},
		{"POST", "/fly/apps/web/ips", `{"kind":"v6"}`, 400, `unknown field \"kind\"`},
		{"POST", "/fly/apps/web/ips", `{"type":"v4"} {"type":"v6"} garbage`, 400, "one JSON value expected, more follows"},
		{"DELETE", "/fly/apps/web/ips/fe80::1%25eth0", "", 400, `\"fe80::1%eth0\": an edge address has no zone`},
		{"POST", "/fly/apps/nope/ips", `{"type":"v6"}`, 404, `unknown app \"nope\"`},
		{"POST", "/fly/apps/other/ips", `{"type":"v6"}`, 409, "the v6 pool is exhausted"},
		{"DELETE", "/fly/apps/other/ips/::1", "", 404, "app other does not hold ::1"},
		{"DELETE", "/fly/apps/web/ips/not-an-ip", "", 400, `\"not-an-ip\" is not an IP address`},
		{"POST", "/fly/apps/other/certs", `{"hostname":"web.` + e.domain + `"}`, 409, "hostname web." + e.domain + " is taken by app web"},
		{"POST", "/fly/apps/other/certs", `{"hostname":"bad host"}`, 400, "is not a valid host name"},
		{"DELETE", "/fly/apps/other/certs/www.nowhere.example", "", 404, "app other has no host name www.nowhere.example"},
		{"GET", "/fly/apps/web/machines/00000000000bad", "", 404, "app web has no machine 00000000000bad"},
		{"POST", "/fly/apps/web/machines", `{"id":"xyz","region":"iad","address":"127.0.0.1"}`, 400, "must be 14 lower-case hexadecimal characters"},
		{"POST", "/fly/apps/web/machines", `{"region":"zzz","address":"127.0.0.1"}`, 400, `region: \"zzz\"`},
		{"POST", "/fly/apps/other/machines", `{"id":"` + ipWeb.id + `","region":"iad","address":"127.0.0.1"}`, 409, "belongs to app web"},
		{"DELETE", "/fly/apps/web/machines/" + ipWeb.id, "", 409, "is defined in the config"},
		{"POST", "/fly/apps/web/machines/00000000000bad/egress-ips", "", 404, "app web has no machine 00000000000bad"},
		{"POST", "/fly/apps/web/machines/" + ipWeb.id + "/egress-ips", "", 409, "egress pairs need both an egress_v4 and an egress_v6 pool"},
		// every body is one JSON object, keys exact and once each
		{"POST", "/fly/apps/web/machines", `{"region":"iad","address":"127.0.0.1","Region":"lhr"}`, 400, `unknown field \"Region\" (field names are case-sensitive: did you mean \"region\"?)`},
		{"POST", "/fly/apps/web/ips", `{"type":"v6","type":"v4"}`, 400, `field \"type\" appears twice`},
		{"POST", "/fly/apps/web/certs", `null`, 400, "request body: null (want an object)"},
		{"PUT", "/fly/apps/strict", `{"services":[]}}`, 400, "apps.strict: one JSON value expected, more follows"},
		{"PUT", "/fly/apps/strict", `null`, 400, "apps.strict: null (want an object)"},
		{"PUT", "/fly/apps/strict", `{"org":"a","org":"b"}`, 400, `apps.strict: field \"org\" appears twice`},
		{"PATCH", "/fly/apps/web/ips", "", 405, "method PATCH not allowed"},
		{"GET", "/fly/nothing", "", 404, "no such endpoint"},
	} {
		status, body := call(t, adminAddr, tc.method, tc.path, tc.body, nil)
		var e struct{ Error string }
		jerr := json.Unmarshal([]byte(body), &e)
		if status != tc.status || jerr != nil || !strings.Contains(body, tc.msg) {
			t.Errorf("%s %s %s: %d %s; want %d with JSON error containing %q", tc.method, tc.path, tc.body, status, body, tc.status, tc.msg)
		}
	}

	// the CLI: readable message, non-zero exit
	out, err := exec.Command(caddyBin, "fly", "ips", "allocate-v6", "-a", "other", "--address", adminAddr).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Error: the v6 pool is exhausted (HTTP 409)") {
		t.Errorf("CLI on a 409: %v\n%s", err, out)
	}
	out, err = exec.Command(caddyBin, "fly", "ips", "list", "-a", "web", "--address", adminAddr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "v4       127.20.0.1  public (shared)") || !strings.Contains(string(out), "v6       ::1") {
		t.Errorf("caddy fly ips list: %v\n%s", err, out)
	}
	// with --json, the error is JSON on stdout too
	stdout, err := exec.Command(caddyBin, "fly", "ips", "allocate-v6", "-a", "other", "--json", "--address", adminAddr).Output()
	var je struct{ Error string }
	if err == nil || json.Unmarshal(stdout, &je) != nil || je.Error != "the v6 pool is exhausted (HTTP 409)" {
		t.Errorf("CLI --json on a 409: %v, stdout %q", err, stdout)
	}
	// a command it does not know is a usage error
	for _, args := range [][]string{{"fly", "bogus"}, {"fly", "ips", "bogus"}, {"fly", "machine", "egress-ip"}} {
		out, err := exec.Command(caddyBin, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Usage:") {
			t.Errorf("caddy %s: %v, want a non-zero exit with the usage\n%s", strings.Join(args, " "), err, out)
		}
	}

	// the API is on the admin listener only
	for _, u := range []string{"http://127.0.0.1:" + e.httpPort + "/fly/ips", "http://" + sharedV4 + ":" + e.httpPort + "/fly/ips"} {
		resp, err := http.Get(u)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), "127.20.0.1") {
				t.Errorf("%s served the admin API: %s", u, b)
			}
		}
	}
}

// TestLiveMachines: machines registered through the admin API (and the
// CLI) take traffic at once, without a config reload, and leave it when
// deregistered.
func TestLiveMachines(t *testing.T) {
	e := startIPEdge(t)
	allocate(t, adminAddr, "other", "shared_v4")
	extra := testMachine{"0000000000f1a1", "iad", "127.0.57.11"}
	startMachines(t, e.machinePort, extra)
	url := "http://other." + e.domain + ":" + e.httpPort + "/"
	shared := via(e.roots, sharedV4)
	out, err := exec.Command(caddyBin, "fly", "machine", "add", "-a", "other", "--id", extra.id, "--region", "iad",
		"--machine-address", extra.ip, "--address", adminAddr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Machine "+extra.id+" added to other") {
		t.Fatalf("caddy fly machine add: %v\n%s", err, out)
	}
	status, body := call(t, adminAddr, http.MethodPost, "/fly/apps/other/machines", `{"id":"`+extra.id+`","region":"iad","address":"`+extra.ip+`"}`, nil)
	if status != http.StatusConflict {
		t.Errorf("adding a machine twice: %d %s, want 409", status, body)
	}
	status, body = call(t, adminAddr, http.MethodPut, "/fly/apps/other/machines/"+ipOther.id, `{"region":"iad","address":"127.0.57.99"}`, nil)
	if status != http.StatusConflict {
		t.Errorf("updating a config machine: %d %s, want 409", status, body)
	}
	seenExtra := false
	for range 40 {
		if got, _ := machineOf(shared, url); got == extra.id {
			seenExtra = true
			break
		}
	}
	if !seenExtra {
		t.Fatalf("the registered machine got no request out of 40")
	}
	out, err = exec.Command(caddyBin, "fly", "machine", "list", "-a", "other", "--address", adminAddr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), extra.id) || !strings.Contains(string(out), ipOther.id) {
		t.Errorf("caddy fly machine list: %v\n%s", err, out)
	}
	// stopped: no traffic
	status, _ = call(t, adminAddr, http.MethodPut, "/fly/apps/other/machines/"+extra.id, `{"region":"iad","address":"`+extra.ip+`","state":"stopped"}`, nil)
	if status != http.StatusOK {
		t.Fatalf("machine update: %d", status)
	}
	for range 20 {
		if got, err := machineOf(shared, url); err != nil || got != ipOther.id {
			t.Fatalf("with the registered machine stopped: machine %q, %v; want %s", got, err, ipOther.id)
		}
	}
	if status, _ := call(t, adminAddr, http.MethodDelete, "/fly/apps/other/machines/"+extra.id, "", nil); status != http.StatusNoContent {
		t.Fatalf("machine remove: %d", status)
	}
	var ms []map[string]string
	call(t, adminAddr, http.MethodGet, "/fly/apps/other/machines", "", &ms)
	if len(ms) != 1 || ms[0]["id"] != ipOther.id {
		t.Errorf("machines after remove: %v", ms)
	}
}

// TestMachinesInEffectOn2xx: a 2xx from the admin API means the change
// is in effect: a request forced to a machine right after its
// registration reaches it, and one right after its removal does not.
func TestMachinesInEffectOn2xx(t *testing.T) {
	e := startIPEdge(t)
	allocate(t, adminAddr, "other", "shared_v4")
	extra := testMachine{"0000000000f1b0", "iad", "127.0.57.12"}
	startMachines(t, e.machinePort, extra)
	url := "http://other." + e.domain + ":" + e.httpPort + "/"
	shared := via(e.roots, sharedV4)
	forced := func(id string) (int, *testkit.Seen) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Fly-Force-Instance-Id", id)
		resp, err := shared.Do(req)
		if err != nil {
			t.Fatalf("GET forced to %s: %v", id, err)
		}
		defer resp.Body.Close()
		var s testkit.Seen
		if json.NewDecoder(resp.Body).Decode(&s) != nil || s.Machine == "" {
			return resp.StatusCode, nil
		}
		return resp.StatusCode, &s
	}
	var unroutable, unremoved int
	for i := range 200 {
		id := fmt.Sprintf("0000000001%04x", i)
		body := `{"region":"iad","address":"` + extra.ip + `"}`
		if status, b := call(t, adminAddr, http.MethodPut, "/fly/apps/other/machines/"+id, body, nil); status != http.StatusCreated {
			t.Fatalf("registering %s: %d %s", id, status, b)
		}
		if status, s := forced(id); status != http.StatusOK || s == nil || s.Machine != extra.id {
			unroutable++
		}
		if status, b := call(t, adminAddr, http.MethodDelete, "/fly/apps/other/machines/"+id, "", nil); status != http.StatusNoContent {
			t.Fatalf("removing %s: %d %s", id, status, b)
		}
		if status, _ := forced(id); status != http.StatusNotFound {
			unremoved++
		}
	}
	if unroutable > 0 || unremoved > 0 {
		t.Errorf("of 200 machines, %d were not routable right after a 201, %d still routable right after a 204", unroutable, unremoved)
	}
}
