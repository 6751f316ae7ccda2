package e2e

import (
	"bufio"
	"context"
	"encoding/json"
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

	"github.com/jackc/pgx/v5"
)

// machines of the apps of the fly.toml edge
var (
	tomlWeb    = testMachine{"0000000000b701", "iad", "127.0.60.1"}
	tomlMail   = testMachine{"0000000000b702", "iad", "127.0.60.2"}
	tomlGame   = testMachine{"0000000000b703", "iad", "127.0.60.3"}
	tomlLegacy = testMachine{"0000000000b704", "iad", "127.0.60.4"}
)

// TestFlyTOMLAdapter: `caddy run --adapter flytoml` serves an edge from
// an edge file and a folder of fly.toml files written as Fly's
// configuration reference shows them: an HTTP app with [http_service],
// a PostgreSQL app with pg_tls, a TCP app with proxy_proto v2, a port
// range, and one full of keys flyedge ignores, each with real traffic.
func TestFlyTOMLAdapter(t *testing.T) {
	requireCaddy(t)
	dir := t.TempDir()
	apps := filepath.Join(dir, "apps")
	os.Mkdir(apps, 0o700)
	webHTTP, webHTTPS, pgPort, ppPort, legacyPort := freePort(), freePort(), freePort(), freePort(), freePort()
	gameLo, gameHi := freePortPair()
	machinePort, sinkPort := freePort(), freePort()
	startMachines(t, machinePort, tomlWeb)
	startSinks(t, sinkPort, 0, tomlGame, tomlLegacy)
	startProxyProtoMachine(t, net.JoinHostPort(tomlMail.ip, sinkPort))
	files := map[string]string{
		"web.toml": `# fly.toml app configuration file generated for web
app = 'web'
primary_region = 'iad'

[build]
  dockerfile = 'Dockerfile'

[http_service]
  internal_port = ` + machinePort + `
  force_https = true
  auto_stop_machines = 'stop'
  auto_start_machines = true
  min_machines_running = 0
  processes = ['app']

[[vm]]
  memory = '1gb'
`,
		"db.toml": `app = "db"
primary_region = "iad"

[[services]]
  protocol = "tcp"
  internal_port = 5432

  [[services.ports]]
    port = ` + pgPort + `
    handlers = ["pg_tls"]

  [services.concurrency]
    type = "connections"
    hard_limit = 1000
    soft_limit = 1000
`,
		"mail.toml": `app = "mail"

[[services]]
  internal_port = ` + sinkPort + `
  protocol = "tcp"

  [[services.ports]]
    port = ` + ppPort + `
    handlers = ["proxy_proto"]
    proxy_proto_options = { version = "v2" }
`,
		"game.toml": `app = "game"

[[services]]
  internal_port = ` + sinkPort + `
  protocol = "tcp"

  [[services.ports]]
    start_port = ` + gameLo + `
    end_port = ` + gameHi + `
`,
		"legacy.toml": `app = "legacy"
kill_signal = "SIGINT"
kill_timeout = 5
processes = []

[env]
  PORT = "8080"

[experimental]
  auto_rollback = true

[[services]]
  http_checks = []
  internal_port = ` + sinkPort + `
  processes = ["app"]
  protocol = "tcp"
  script_checks = []

  [[services.ports]]
    port = "` + legacyPort + `"

  [[services.tcp_checks]]
    grace_period = "1s"
    interval = "15s"
    restart_limit = 0
    timeout = "2s"
`,
	}
	for name, doc := range files {
		if err := os.WriteFile(filepath.Join(apps, name), []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	admin := freeAddr()
	edgeFile := filepath.Join(dir, "edge.toml")
	os.WriteFile(edgeFile, []byte(`[edge]
region = "iad"
base_domain = "toml.test"
apps = "apps"
shared_v4 = ["`+sharedV4+`"]
v4 = ["`+v4Pool+`"]
http_port = `+webHTTP+`
https_port = `+webHTTPS+`
issuer = "internal"
admin = "`+admin+`"
`), 0o600)

	// adapt shows the warnings with file and line, and the keys of the
	// machines and the builder in one info line a file
	out, err := exec.Command(caddyBin, "adapt", "--adapter", "flytoml", "--config", edgeFile).CombinedOutput()
	if err != nil {
		t.Fatalf("adapt: %v\n%s", err, out)
	}
	for _, want := range []string{`"msg":"` + filepath.Join(apps, "web.toml") + `: build, vm: read by the machines or the builder, not the edge; left to them"`,
		`"msg":"` + filepath.Join(apps, "legacy.toml") + `: env, experimental, kill_signal, kill_timeout, services.script_checks, services.tcp_checks.restart_limit: read by the machines`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("adapt output lacks %s\n%s", want, out)
		}
	}
	for _, notWarned := range []string{`processes is not implemented`, `build is not implemented`, `kill_signal is not implemented`, `restart_limit is not implemented`, `auto_stop_machines is not implemented`} {
		if strings.Contains(string(out), notWarned) {
			t.Errorf("adapt output warns %q", notWarned)
		}
	}

	home := t.TempDir()
	log := runCaddy(t, home, admin, "run", "--adapter", "flytoml", "--config", edgeFile)
	// issuer = "internal" leaves the host's trust stores alone
	waitLog(t, log, "root certificate trust store installation disabled")
	checkOwnListeners(t, mustAtoi(webHTTP), mustAtoi(webHTTPS), mustAtoi(pgPort), mustAtoi(ppPort), mustAtoi(gameLo), mustAtoi(gameHi), mustAtoi(legacyPort))
	for _, m := range []struct {
		app string
		m   testMachine
	}{{"web", tomlWeb}, {"mail", tomlMail}, {"game", tomlGame}, {"legacy", tomlLegacy}, {"db", testMachine{"0000000000b705", "iad", "127.0.0.1"}}} {
		if status, body := call(t, admin, http.MethodPost, "/fly/apps/"+m.app+"/machines", fmt.Sprintf(`{"id":%q,"region":"iad","address":%q}`, m.m.id, m.m.ip), nil); status != http.StatusCreated {
			t.Fatalf("machine of %s: %d %s", m.app, status, body)
		}
	}
	roots := caddyRoots(t, home)

	// web: [http_service] on the edge's web ports, given its shared
	// address on its first start
	shared := via(roots, sharedV4)
	shared.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := shared.Get("http://web.toml.test:" + webHTTP + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently {
		t.Errorf("force_https from [http_service]: %d", resp.StatusCode)
	}
	if got, err := machineOf(shared, "https://web.toml.test:"+webHTTPS+"/"); err != nil || got != tomlWeb.id {
		t.Errorf("web over HTTPS: %q, %v\n%s", got, err, log.String())
	}

	mailV4, gameV4, legacyV4, dbV4 := allocate(t, admin, "mail", "v4"), allocate(t, admin, "game", "v4"), allocate(t, admin, "legacy", "v4"), allocate(t, admin, "db", "v4")
	// mail: proxy_proto v2
	pc, err := net.DialTimeout("tcp", net.JoinHostPort(mailV4, ppPort), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	pc.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(pc, "helo\n")
	line, _ := bufio.NewReader(pc).ReadString('\n')
	pc.Close()
	if !strings.HasPrefix(line, fmt.Sprintf("v2 %s ", pc.LocalAddr())) {
		t.Errorf("proxy_proto v2 from mail.toml: the machine saw %q", line)
	}
	// game: each port of the range; legacy: its quoted port
	for _, addr := range []string{net.JoinHostPort(gameV4, gameLo), net.JoinHostPort(gameV4, gameHi)} {
		if id, _, _, _ := exchange(t, addr, 100, "g"); id != tomlGame.id {
			t.Errorf("%s: machine %s", addr, id)
		}
	}
	if id, _, _, _ := exchange(t, net.JoinHostPort(legacyV4, legacyPort), 100, "l"); id != tomlLegacy.id {
		t.Errorf("legacy: machine %s", id)
	}
	// db: pg_tls to this host's PostgreSQL
	t.Run("pg_tls", func(t *testing.T) {
		requirePostgres(t)
		rootFile := filepath.Join(t.TempDir(), "root.crt")
		os.WriteFile(rootFile, must(os.ReadFile(filepath.Join(home, "data", "caddy", "pki", "authorities", "local", "root.crt"))), 0o600)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=verify-ca sslrootcert=%s connect_timeout=5", dbV4, pgPort, rootFile))
		if err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatalf("pg_tls from db.toml: %v", err)
		}
		defer conn.Close(ctx)
		var one int
		if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
			t.Errorf("select 1: %d, %v", one, err)
		}
	})
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
	for _, want := range []string{
		`fly.toml:13: http_service.force_http is not a key flyedge knows; ignored: did you mean "force_https"?`} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("deploy warnings lack %q:\n%s", want, stderr.String())
		}
	}
	// build is the builder's (one note says so), auto_stop_machines is
	// handed through for scale-to-zero: no warnings
	for _, line := range strings.Split(stderr.String(), "\n") {
		if strings.HasPrefix(line, "warning:") && (strings.Contains(line, "build") || strings.Contains(line, "auto_stop_machines")) {
			t.Errorf("deploy warns: %s", line)
		}
	}
	if want := "note: " + file + ": build: read by the machines or the builder, not the edge; left to them"; !strings.Contains(stderr.String(), want) {
		t.Errorf("deploy does not say %q:\n%s", want, stderr.String())
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

	// the checks' bounds: a fly.toml's interval = 1 is 1 ms, below the
	// floor, and the admin API says so (400) with the line; JSON too
	toml := "app = 'shop'\n[http_service]\n  internal_port = 8080\n  [[http_service.checks]]\n    interval = 1\n"
	req, _ := http.NewRequest(http.MethodPut, "http://"+adminAddr+"/fly/apps/shop", strings.NewReader(toml))
	req.Header.Set("Content-Type", "application/toml")
	resp, err = adminClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	status, body := resp.StatusCode, string(must(io.ReadAll(resp.Body)))
	resp.Body.Close()
	if want := "fly.toml:5: http_service.checks[0].interval: 1ms is below the minimum of 1s (a number is milliseconds)"; status != http.StatusBadRequest || !strings.Contains(body, want) {
		t.Errorf("a check every millisecond: %d %s, want 400 with %q", status, body, want)
	}
	checks := strings.Repeat(`{"type":"tcp"},`, 20) + `{"type":"tcp"}`
	status, body = call(t, adminAddr, http.MethodPut, "/fly/apps/shop", `{"services":[{"internal_port":8080,"ports":[{"port":`+e.httpsPort+`,"handlers":["tls","http"]}],"checks":[`+checks+`]}]}`, nil)
	if want := "apps.shop.services[0].checks: 21 checks in the app; at most 20 per app"; status != http.StatusBadRequest || !strings.Contains(body, want) {
		t.Errorf("21 checks: %d %s, want 400 with %q", status, body, want)
	}
}

// TestFlyTOMLCorpusValidate: `caddy validate --adapter flytoml` takes each
// real fly.toml of ../shared/flytoml through a built Caddy, each on an
// edge of its own (named by its edge file entry: some have no app) and
// all on one edge: a private database and a worker (no public ports: no
// fly_edge app), udp services (on the edge's udp_ports), a stray
// [services.concurrency], a service of internal_port 0.
func TestFlyTOMLCorpusValidate(t *testing.T) {
	requireCaddy(t)
	corpus, _ := filepath.Abs(filepath.Join(moduleRoot, "..", "shared", "flytoml"))
	files, _ := filepath.Glob(filepath.Join(corpus, "*.toml"))
	if len(files) == 0 {
		t.Skipf("no fly.toml files in %s", corpus)
	}
	dir := t.TempDir()
	validate := func(t *testing.T, edge string) string {
		t.Helper()
		file := filepath.Join(dir, t.Name()[strings.LastIndexByte(t.Name(), '/')+1:]+".edge.toml")
		if err := os.WriteFile(file, []byte(edge), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(caddyBin, "validate", "--adapter", "flytoml", "--config", file)
		cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Valid configuration") {
			t.Errorf("caddy validate: %v\n%s", err, out)
		}
		return string(out)
	}
	for i, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			out := validate(t, fmt.Sprintf("[edge]\nissuer = 'internal'\napps = [{path = %q, app = 'corpus-%d'}]\n", f, i))
			switch {
			case strings.HasPrefix(filepath.Base(f), "008-"):
				if !strings.Contains(out, "no public services") || !strings.Contains(out, "no fly_edge app") {
					t.Errorf("a private database: no note that the edge serves nothing\n%s", out)
				}
			case strings.Contains(out, "no fly_edge app"):
				t.Errorf("an app with ports got no fly_edge app\n%s", out)
			}
		})
	}
	t.Run("all", func(t *testing.T) {
		validate(t, fmt.Sprintf("[edge]\nissuer = 'internal'\napps = [%q, {path = %q, app = 'grpc-service'}, {path = %q, app = 'pickfight-relay-pp'}]\n",
			corpus, filepath.Join(corpus, "019-fly-apps-grpc-service.toml"), filepath.Join(corpus, "066-tkneeland-pickfight-relay_fly-proxy_proto-variant.toml")))
	})
}
