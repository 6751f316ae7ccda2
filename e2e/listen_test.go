package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// machines of the edge whose ports the services drive
var (
	svcWeb  = testMachine{"0000000000e601", "iad", "127.0.59.1"}
	svcRaw  = testMachine{"0000000000e602", "iad", "127.0.59.2"}
	svcTLS  = testMachine{"0000000000e603", "iad", "127.0.59.3"}
	svcPP   = testMachine{"0000000000e604", "iad", "127.0.59.4"}
	svcGame = testMachine{"0000000000e605", "iad", "127.0.59.5"}
	svcNew  = testMachine{"0000000000e606", "iad", "127.0.59.6"}
	svcTPP  = testMachine{"0000000000e607", "iad", "127.0.59.7"}
)

// servicesEdge is a complete edge written as the README says: the fly
// and fly_ips options and one short site block; no layer4 server, no
// listener wrapper, no route per port.
const servicesEdge = `{
	admin %[1]s
	persist_config off
	skip_install_trust
	storage file_system %[2]s
	fly {
		region iad
		base_domain %[3]s
		app web {
			service %[4]s {
				port %[5]s http {
					force_https
				}
				port %[6]s tls http
			}
			machine ` + "%[11]s" + ` iad %[12]s
		}
		app raw {
			service %[7]s {
				port %[6]s
			}
			machine %[13]s iad %[14]s
		}
		app secure {
			service %[7]s {
				port %[8]s tls
			}
			machine %[15]s iad %[16]s
		}
		app pp {
			service %[7]s {
				port %[9]s proxy_proto {
					proxy_proto_version v2
				}
			}
			machine %[17]s iad %[18]s
		}
		app game {
			service %[7]s {
				port %[19]s
				port %[20]s
			}
			machine %[21]s iad %[22]s
		}
		app db {
			service 5432 {
				port %[10]s pg_tls
			}
			machine 2a6c5e8f0b1d95 iad 127.0.0.1
		}
		app tpp {
			service %[7]s {
				port %[23]s tls proxy_proto
			}
			machine %[24]s iad %[25]s
		}
	}
	fly_ips {
		shared_v4 ` + sharedV4 + `
		v4 ` + v4Pool + `
		auto_allocate off
		http_port %[5]s
		https_port %[6]s
	}
	fly_edge {
		ports %[5]s %[6]s %[8]s %[9]s %[10]s %[19]s-%[20]s %[23]s
		issuer internal
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

// TestServicesDriveListeners: with the edge's ports stated once, every
// handler list works on any of them, raw TCP and HTTPS on one port
// included, through a complete edge of two global options and one site
// block; a service on another port is refused.
func TestServicesDriveListeners(t *testing.T) {
	requireCaddy(t)
	httpPort, httpsPort, tlsPort, ppPort, pgPort := freePort(), freePort(), freePort(), freePort(), freePort()
	gameLo, gameHi := freePortPair()
	machinePort, sinkPort, tppPort := freePort(), freePort(), freePort()
	storage := t.TempDir()
	edgeCount++
	domain := fmt.Sprintf("services-%d.test", edgeCount)
	startMachines(t, machinePort, svcWeb, svcNew)
	startSinks(t, sinkPort, 0, svcRaw, svcTLS, svcGame)
	startProxyProtoMachine(t, net.JoinHostPort(svcPP.ip, sinkPort))
	startProxyProtoMachine(t, net.JoinHostPort(svcTPP.ip, sinkPort))
	cfg := fmt.Sprintf(servicesEdge, adminAddr, storage, domain, machinePort, httpPort, httpsPort, sinkPort, tlsPort, ppPort, pgPort,
		svcWeb.id, svcWeb.ip, svcRaw.id, svcRaw.ip, svcTLS.id, svcTLS.ip, svcPP.id, svcPP.ip, gameLo, gameHi, svcGame.id, svcGame.ip,
		tppPort, svcTPP.id, svcTPP.ip)
	mustLoad(t, cfg)
	checkOwnListeners(t, mustAtoi(httpPort), mustAtoi(httpsPort), mustAtoi(tlsPort), mustAtoi(ppPort), mustAtoi(pgPort), mustAtoi(gameLo), mustAtoi(gameHi))
	roots := storageRoots(t, storage)

	allocate(t, adminAddr, "web", "shared_v4")
	allocate(t, adminAddr, "secure", "shared_v4")
	allocate(t, adminAddr, "tpp", "shared_v4")
	rawV4 := allocate(t, adminAddr, "raw", "v4")
	ppV4 := allocate(t, adminAddr, "pp", "v4")
	gameV4 := allocate(t, adminAddr, "game", "v4")
	dbV4 := allocate(t, adminAddr, "db", "v4")

	// http and tls+http, HTTP/1.1 and HTTP/2, on the shared address
	shared := via(roots, sharedV4)
	shared.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := shared.Get("http://web." + domain + ":" + httpPort + "/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "https://web."+domain+":"+httpsPort+"/x" {
		t.Errorf("http with force_https: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	for _, h2 := range []bool{true, false} {
		c := clientVia(roots, sharedV4, h2)
		resp, _, s := get(t, c, "https://web."+domain+":"+httpsPort+"/", nil)
		want := map[bool]string{true: "HTTP/2.0", false: "HTTP/1.1"}[h2]
		if s == nil || s.Machine != svcWeb.id || resp.Proto != want {
			t.Errorf("tls http (h2 %v): %s, machine %v", h2, resp.Proto, s)
		}
	}
	// raw TCP on the same port, on raw's dedicated address
	id, gotHash, _, _ := exchange(t, net.JoinHostPort(rawV4, httpsPort), 1<<16, "raw")
	if id != svcRaw.id || gotHash != hashOf(stream("raw"), 1<<16) {
		t.Errorf("raw TCP beside HTTPS on port %s: machine %s", httpsPort, id)
	}
	// tls on the shared address, by server name
	tc, err := tls.Dial("tcp", net.JoinHostPort(sharedV4, tlsPort), &tls.Config{ServerName: "secure." + domain, RootCAs: roots})
	if err != nil {
		t.Fatalf("tls: %v", err)
	}
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	tc.Write([]byte("over tls"))
	tc.CloseWrite()
	if b, _ := io.ReadAll(tc); !strings.HasPrefix(string(b), svcTLS.id+" ") {
		t.Errorf("tls: machine answered %q", b)
	}
	tc.Close()
	// proxy_proto v2 on a dedicated address
	pc, err := net.DialTimeout("tcp", net.JoinHostPort(ppV4, ppPort), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	pc.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(pc, "hello\n")
	line, _ := bufio.NewReader(pc).ReadString('\n')
	pc.Close()
	if want := fmt.Sprintf("v2 %s ", pc.LocalAddr()); !strings.HasPrefix(line, want) || !strings.HasSuffix(line, "hello\n") {
		t.Errorf("proxy_proto v2: the machine saw %q, want %q...", line, want)
	}
	// tls then proxy_proto, on the shared address
	tc, err = tls.Dial("tcp", net.JoinHostPort(sharedV4, tppPort), &tls.Config{ServerName: "tpp." + domain, RootCAs: roots})
	if err != nil {
		t.Fatalf("tls proxy_proto: %v", err)
	}
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(tc, "hello\n")
	line, _ = bufio.NewReader(tc).ReadString('\n')
	tc.Close()
	if want := fmt.Sprintf("v1 %s ", tc.LocalAddr()); !strings.HasPrefix(line, want) || !strings.HasSuffix(line, "hello\n") {
		t.Errorf("tls proxy_proto: the machine saw %q, want %q...", line, want)
	}
	// each port of a range
	for _, port := range []string{gameLo, gameHi} {
		if id, _, _, _ := exchange(t, net.JoinHostPort(gameV4, port), 10, "game"); id != svcGame.id {
			t.Errorf("port %s of the range: machine %s", port, id)
		}
	}
	// pg_tls, with a real PostgreSQL behind it when this host runs one
	t.Run("pg_tls", func(t *testing.T) {
		requirePostgres(t)
		rootFile := filepath.Join(t.TempDir(), "root.crt")
		os.WriteFile(rootFile, must(os.ReadFile(filepath.Join(storage, "pki", "authorities", "local", "root.crt"))), 0o600)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		pcfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=postgres dbname=postgres sslmode=verify-ca sslrootcert=%s connect_timeout=5", dbV4, pgPort, rootFile))
		if err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.ConnectConfig(ctx, pcfg)
		if err != nil {
			t.Fatalf("pg_tls: %v", err)
		}
		defer conn.Close(ctx)
		var one int
		if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
			t.Errorf("select 1 through pg_tls: %d, %v", one, err)
		}
	})

	// an app created at run time may use any of the ports, with any
	// handlers, and is served at once
	status, body := call(t, adminAddr, http.MethodPut, "/fly/apps/fresh",
		fmt.Sprintf(`{"services":[{"internal_port":%s,"ports":[{"port":%s,"handlers":["tls","http"]},{"port":%s,"handlers":["tls","http"]}]}]}`, machinePort, tlsPort, httpsPort), nil)
	if status != http.StatusCreated {
		t.Fatalf("PUT fresh: %d %s", status, body)
	}
	allocate(t, adminAddr, "fresh", "shared_v4")
	call(t, adminAddr, http.MethodPost, "/fly/apps/fresh/machines", fmt.Sprintf(`{"id":%q,"region":"iad","address":%q}`, svcNew.id, svcNew.ip), nil)
	if got, err := machineOf(shared, "https://fresh."+domain+":"+tlsPort+"/"); err != nil || got != svcNew.id {
		t.Errorf("HTTPS of a new app on %s, beside secure's tls: %q, %v", tlsPort, got, err)
	}

	// a connection set up for one app's name carries no request for
	// another app: 421, over HTTP/1.1 and HTTP/2 (a coalesced connection)
	for _, h2 := range []bool{false, true} {
		c := clientNamed(roots, sharedV4, "web."+domain, h2)
		resp, body, s := get(t, c, "https://fresh."+domain+":"+httpsPort+"/", nil)
		if resp.StatusCode != http.StatusMisdirectedRequest || s != nil || !strings.HasPrefix(body, "PA03: ") {
			t.Errorf("Host of fresh over a connection for web (h2 %v): %d %q, machine %v; want 421 PA03", h2, resp.StatusCode, body, s)
		}
		// the connection's own app, by its name
		if _, _, s := get(t, c, "https://web."+domain+":"+httpsPort+"/", nil); s == nil || s.Machine != svcWeb.id {
			t.Errorf("web over its own connection (h2 %v): machine %v", h2, s)
		}
	}
	if got, err := machineOf(shared, "https://fresh."+domain+":"+httpsPort+"/"); err != nil || got != svcNew.id {
		t.Errorf("fresh over a connection of its own: %q, %v", got, err)
	}

	// a TLS client that names no app here gets a TLS alert, not a
	// plain-text HTTP answer in its handshake
	for _, name := range []string{"nobody." + domain, ""} {
		_, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", net.JoinHostPort(sharedV4, httpsPort), &tls.Config{ServerName: name, InsecureSkipVerify: true})
		if err == nil || !strings.Contains(err.Error(), "unrecognized name") {
			t.Errorf("TLS for %q on the shared address: %v; want the alert unrecognized_name", name, err)
		}
	}

	// ...but not a port the edge does not listen on
	status, body = call(t, adminAddr, http.MethodPut, "/fly/apps/fresh2", fmt.Sprintf(`{"services":[{"internal_port":80,"ports":[{"port":%s}]}]}`, machinePort), nil)
	if status != http.StatusBadRequest || !strings.Contains(body, "port: "+machinePort+" is not one of the edge's ports") {
		t.Errorf("PUT with a port outside the edge's: %d %s", status, body)
	}
	// a plain request for a port that is tls+http goes nowhere
	if got, err := machineOf(shared, "http://web."+domain+":"+httpsPort+"/"); err == nil {
		t.Errorf("plain HTTP on web's tls+http port reached %s", got)
	}
	// the config refuses a service outside the edge's ports, naming it
	bad := strings.Replace(cfg, "port "+pgPort+" pg_tls", "port 1 pg_tls", 1)
	if err := load(t, bad, "caddyfile"); err == nil || !strings.Contains(err.Error(), "apps.db.services[0].ports[0].port: 1 is not one of the edge's ports") {
		t.Errorf("a config with a service on port 1: %v", err)
	}
}

// clientNamed is an HTTPS client whose every connection goes to ip and
// names server in its TLS handshake, whatever the URL's host: a client
// that reuses one connection for several names.
func clientNamed(roots *x509.CertPool, ip, server string, h2 bool) *http.Client {
	protos := []string{"http/1.1"}
	if h2 {
		protos = []string{"h2"}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		ForceAttemptHTTP2: h2,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, _ := net.SplitHostPort(addr)
			d := tls.Dialer{Config: &tls.Config{ServerName: server, RootCAs: roots, NextProtos: protos}}
			return d.DialContext(ctx, network, net.JoinHostPort(ip, port))
		},
	}}
}

func mustAtoi(s string) int {
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		panic(err)
	}
	return n
}

// startupEdge is an edge with its admin endpoint on %[1]s, its port
// %[2]s, a third line in fly_ips (%[3]s) and a site that names the edge
// (EDGE_NAME in its environment).
const startupEdge = `{
	admin %[1]s
	persist_config off
	skip_install_trust
	fly {
		app web {
			service 3000 {
				port %[2]s http
			}
			machine 148ed193b95189 iad 127.0.1.1
		}
	}
	fly_ips {
		auto_allocate off
	}
	fly_edge {
		ports %[2]s
		issuer internal
		%[3]s
	}
	on_demand_tls {
		permission fly
	}
}

http:// {
	bind fly/edge
	respond "{env.EDGE_NAME}"
}
`

// startupProc is a Caddy process a startup test runs.
type startupProc struct {
	cmd    *exec.Cmd
	log    *logBuf
	exited chan struct{}
}

// startEdgeProc starts a Caddy named name on config, with a home of its own.
func startEdgeProc(t *testing.T, name, config string) *startupProc {
	t.Helper()
	return startEdgeProcVia(t, name, config)
}

// startEdgeProcVia is startEdgeProc, the command run through wrapper
// (prlimit --nofile=…, say).
func startEdgeProcVia(t *testing.T, name, config string, wrapper ...string) *startupProc {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &startupProc{log: new(logBuf), exited: make(chan struct{})}
	args := append(wrapper, caddyBin, "run", "--config", file, "--adapter", "caddyfile")
	p.cmd = exec.Command(args[0], args[1:]...)
	p.cmd.Env = append(caddyEnv(dir), "EDGE_NAME="+name)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.SysProcAttr = dieWithTests()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ownProcess(p.cmd.Process.Pid)
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM) // an error when it exited already
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// started waits until p serves its config (true) or exits (false).
func (p *startupProc) started(t *testing.T) bool {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case <-p.exited:
			return false
		default:
		}
		if strings.Contains(p.log.String(), "serving initial configuration") {
			return true
		}
	}
	t.Fatalf("caddy neither started nor exited within 60s:\n%s", p.log)
	return false
}

// TestSecondEdgeRefused: a second edge started on the admin address of a
// running one, or on its ports, exits non-zero and says which process
// serves them (Caddy binds with SO_REUSEPORT: it would have split the
// connections and admin calls with the first in silence); the first goes
// on serving alone. With share_ports, an edge shares its ports on
// purpose.
func TestSecondEdgeRefused(t *testing.T) {
	requireCaddy(t)
	admin, port := freeAddr(), freePort()
	first := startEdgeProc(t, "first", fmt.Sprintf(startupEdge, admin, port, ""))
	if !first.started(t) {
		t.Fatalf("the first edge exited:\n%s", first.log)
	}
	pid := strconv.Itoa(first.cmd.Process.Pid)
	edgeURL := "http://127.0.0.1:" + port + "/"
	firstServes := func(when string) {
		t.Helper()
		if status, _ := call(t, admin, http.MethodGet, "/config/", "", nil); status != http.StatusOK {
			t.Errorf("%s: the first edge's admin endpoint answered %d", when, status)
		}
		for range 20 {
			resp, err := http.Get(edgeURL)
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "first" {
				t.Fatalf("%s: %s answered %q, want the first edge", when, edgeURL, b)
			}
		}
	}
	firstServes("one edge")

	for _, tc := range []struct{ name, admin, want string }{
		{"same admin address", admin, "admin endpoint " + admin + " is already served by another process (pid " + pid + ": "},
		{"same edge port", freeAddr(), "edge port " + port + " is already served by another process (pid " + pid + ": "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			second := startEdgeProc(t, "second", fmt.Sprintf(startupEdge, tc.admin, port, ""))
			if second.started(t) {
				t.Fatalf("a second edge started beside the first:\n%s", second.log)
			}
			if code := second.cmd.ProcessState.ExitCode(); code == 0 {
				t.Errorf("the second edge exited with 0")
			}
			if log := second.log.String(); !strings.Contains(log, tc.want) || !strings.Contains(log, "stop it first") {
				t.Errorf("the second edge's log does not say %q ... stop it first:\n%s", tc.want, log)
			}
			firstServes("after the second edge")
			checkOwnListeners(t, portNumber(t, admin), portNumber(t, port))
		})
	}

	t.Run("share_ports", func(t *testing.T) {
		shared := startEdgeProc(t, "shared", fmt.Sprintf(startupEdge, freeAddr(), port, "share_ports"))
		if !shared.started(t) {
			t.Fatalf("an edge with share_ports did not start beside the first:\n%s", shared.log)
		}
		if n := len(listeningOn(t, []int{portNumber(t, port)})); n != 2 {
			t.Errorf("%d sockets listen on the shared port, want 2", n)
		}
	})
}

// portNumber returns the port of an address or the number of a port.
func portNumber(t *testing.T, s string) int {
	t.Helper()
	if i := strings.LastIndex(s, ":"); i >= 0 {
		s = s[i+1:]
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestLegacyEdgeConfig: a config that still sets the edge's ports and
// settings in fly_ips (before the fly_edge app) runs the same edge and
// warns that they moved; one that sets them in both places fails to
// load and says to keep one.
func TestLegacyEdgeConfig(t *testing.T) {
	requireCaddy(t)
	admin, port := freeAddr(), freePort()
	legacy := strings.Replace(fmt.Sprintf(startupEdge, admin, port, ""), "\t}\n\tfly_edge {\n", "", 1)
	if !strings.Contains(legacy, "fly_ips {\n\t\tauto_allocate off\n\t\tports "+port+"\n") {
		t.Fatalf("the legacy config is not the old shape:\n%s", legacy)
	}
	p := startEdgeProc(t, "legacy", legacy)
	if !p.started(t) {
		t.Fatalf("an edge configured the old way did not start:\n%s", p.log)
	}
	resp, err := http.Get("http://127.0.0.1:" + port + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "legacy" {
		t.Errorf("the edge's port answered %q, want the legacy edge", b)
	}
	checkOwnListeners(t, portNumber(t, port))
	if n := len(listeningOn(t, []int{portNumber(t, port)})); n != 1 {
		t.Errorf("%d sockets listen on the edge's port, want 1 (the edge started once)", n)
	}
	if log := p.log.String(); !strings.Contains(log, "fly_ips: ports, udp_ports and edge are deprecated: they are the fly_edge app's now") {
		t.Errorf("no deprecation warning in the log:\n%s", log)
	}

	both := strings.Replace(fmt.Sprintf(startupEdge, freeAddr(), freePort(), ""), "\t\tauto_allocate off\n", "\t\tauto_allocate off\n\t\tports "+freePort()+"\n", 1)
	p2 := startEdgeProc(t, "both", both)
	if p2.started(t) {
		t.Fatalf("an edge with ports in fly_ips and in fly_edge started:\n%s", p2.log)
	}
	if log := p2.log.String(); !strings.Contains(log, "the config has a fly_edge app; set the edge's ports and settings there only") {
		t.Errorf("the log does not say to keep one place:\n%s", log)
	}
}
