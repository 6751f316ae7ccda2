package e2e

import (
	"bufio"
	"context"
	"fmt"
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

	// adapt shows the warnings with file and line
	out, err := exec.Command(caddyBin, "adapt", "--adapter", "flytoml", "--config", edgeFile).CombinedOutput()
	if err != nil {
		t.Fatalf("adapt: %v\n%s", err, out)
	}
	for _, want := range []string{`"msg":"build is not implemented by flyedge; ignored","file":"` + filepath.Join(apps, "web.toml") + `","line":5`, `"msg":"kill_signal is not implemented`, `"msg":"services[0].tcp_checks[0].restart_limit is not implemented`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("adapt output lacks %s", want)
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
