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
)

// apps created at run time, and their machines
var (
	apiWeb = testMachine{"0000000000a501", "iad", "127.0.58.1"}
	apiTCP = testMachine{"0000000000a502", "iad", "127.0.58.2"}
)

// fly runs `caddy fly args...` against admin and returns its output.
func fly(t *testing.T, admin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(caddyBin, append(append([]string{"fly"}, args...), "--address", admin)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestAppsThroughAPI: apps created, changed and destroyed through the
// admin API and the CLI serve real traffic at once, without a config
// load, on the edge that took the change and on another edge sharing its
// storage; destroying one releases its addresses and closes its
// connections; the config's apps stay the config's.
func TestAppsThroughAPI(t *testing.T) {
	e := startIPEdge(t)
	node := startStorageNode(t, e.storage) // another edge on the same storage
	startMachines(t, e.machinePort, apiWeb)
	startSinks(t, e.rawPort, 0, apiTCP)
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
	c, err := net.DialTimeout("tcp", net.JoinHostPort(v4.Address, e.httpsPort), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("still here"))
	time.Sleep(100 * time.Millisecond) // the edge has dialed the machine
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

// TestDeployFlyTOML: `caddy fly deploy` takes a fly.toml written as Fly's
// configuration reference shows it: its [http_service] serves at once on
// the edge's web ports (Fly's 80 and 443), force_https included; the keys
// flyedge does not implement are named in warnings; a second deploy
// updates the app; a fly.toml Fly would refuse names file, key and line.
func TestDeployFlyTOML(t *testing.T) {
	e := startIPEdge(t)
	deployed := testMachine{"0000000000a503", "iad", "127.0.58.3"}
	startMachines(t, e.machinePort, deployed)
	dir := t.TempDir()
	file := filepath.Join(dir, "fly.toml")
	write := func(doc string) {
		if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`# fly.toml app configuration file generated for shop
app = 'shop'
primary_region = 'iad'

[build]
  image = 'registry.example/shop:latest'

[http_service]
  internal_port = ` + e.machinePort + `
  force_https = true
  auto_stop_machines = 'stop'
  processes = ['app']
  force_http = true

  [http_service.concurrency]
    type = 'requests'
    soft_limit = 20
    hard_limit = 25
`)
	cmd := exec.Command(caddyBin, "fly", "deploy", "-c", file, "--address", adminAddr)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || !strings.Contains(string(out), "Deployed shop from "+file) {
		t.Fatalf("deploy: %v\n%s%s", err, out, stderr.String())
	}
	for _, want := range []string{"fly.toml:5: build is not implemented", "fly.toml:11: http_service.auto_stop_machines is not implemented", "fly.toml:12: http_service.processes",
		`fly.toml:13: http_service.force_http is not a key flyedge knows; ignored: did you mean "force_https"?`} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("deploy warnings lack %q:\n%s", want, stderr.String())
		}
	}
	// no machines yet: the first request would get PR01, so deploy says how to add one
	if want := "App shop has no machines yet: its requests get PR01 (no machine can take the request) until one is registered with\n  caddy fly machine add -a shop --region iad --machine-address <host or IP> --address " + adminAddr + "\n"; !strings.Contains(string(out), want) {
		t.Errorf("deploy of an app without machines does not say %q:\n%s", want, out)
	}
	// machine add names the flag it lacks, not the API's field
	if out, err := fly(t, adminAddr, "machine", "add", "-a", "shop", "--region", "iad"); err == nil || !strings.Contains(out, "Error: machine add needs --machine-address <host or IP>") || strings.Contains(out, "machine.address") {
		t.Errorf("machine add without an address: %v\n%s", err, out)
	}
	allocate(t, adminAddr, "shop", "shared_v4")
	if out, err := fly(t, adminAddr, "machine", "add", "-a", "shop", "--id", deployed.id, "--region", "iad", "--machine-address", deployed.ip); err != nil {
		t.Fatalf("machine add: %v\n%s", err, out)
	}
	shared := via(e.roots, sharedV4)
	shared.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := shared.Get("http://shop." + e.domain + ":" + e.httpPort + "/cart")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if want := "https://shop." + e.domain + ":" + e.httpsPort + "/cart"; resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != want {
		t.Errorf("Fly's port 80 with force_https: %d to %q, want 301 to %s", resp.StatusCode, resp.Header.Get("Location"), want)
	}
	if got, err := machineOf(shared, "https://shop."+e.domain+":"+e.httpsPort+"/"); err != nil || got != deployed.id {
		t.Errorf("Fly's port 443: machine %q, %v", got, err)
	}

	// a second deploy updates it: no force_https any more
	write(strings.Replace(string(must(os.ReadFile(file))), "force_https = true", "force_https = false", 1))
	if out, err := fly(t, adminAddr, "deploy", "-c", file); err != nil || strings.Contains(out, "no machines") {
		t.Fatalf("second deploy (the app has a machine now): %v\n%s", err, out)
	}
	if got, err := machineOf(shared, "http://shop."+e.domain+":"+e.httpPort+"/"); err != nil || got != deployed.id {
		t.Errorf("after the update, plain HTTP: machine %q, %v", got, err)
	}

	// a deploy keeps the org the app was created with: a fly.toml has none
	if out, err := fly(t, adminAddr, "apps", "create", "shop2", "--org", "victim"); err != nil {
		t.Fatalf("apps create --org: %v\n%s", err, out)
	}
	if out, err := fly(t, adminAddr, "deploy", "-c", file, "-a", "shop2"); err != nil {
		t.Fatalf("deploying an app created with --org: %v\n%s", err, out)
	}
	out3, err := fly(t, adminAddr, "apps", "list", "--json")
	var apps []struct{ Name, Org string }
	if err := json.Unmarshal([]byte(out3), &apps); err != nil {
		t.Fatalf("apps list --json: %v\n%s", err, out3)
	}
	for _, a := range apps {
		if a.Name == "shop2" && a.Org != "victim" {
			t.Errorf("after a deploy, shop2's org is %q, want victim", a.Org)
		}
	}

	// refused: file, key and line; the app is left as it was
	write("app = 'shop'\n\n[[services]]\n  internal_port = 8080\n  [[services.ports]]\n    port = 443\n    handlers = ['tls']\n    force_https = true\n")
	out2, err := fly(t, adminAddr, "deploy", "-c", file)
	if err == nil || !strings.Contains(out2, file+":8: services[0].ports[0].force_https: needs the http handler") {
		t.Errorf("a force_https without http: %v\n%s", err, out2)
	}
	if got, err := machineOf(shared, "http://shop."+e.domain+":"+e.httpPort+"/"); err != nil || got != deployed.id {
		t.Errorf("after a refused deploy: machine %q, %v", got, err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
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
