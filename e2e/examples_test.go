package e2e

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
)

// TestExamplesAgree checks that caddy.json.example is Caddyfile.example
// in JSON.
func TestExamplesAgree(t *testing.T) {
	requireCaddy(t)
	out, err := exec.Command(caddyBin, "adapt", "--config", filepath.Join(moduleRoot, "Caddyfile.example")).Output()
	if err != nil {
		t.Fatalf("adapting Caddyfile.example: %v", err)
	}
	raw, err := os.ReadFile(filepath.Join(moduleRoot, "caddy.json.example"))
	if err != nil {
		t.Fatal(err)
	}
	var fromCaddyfile, fromJSON any
	if err := json.Unmarshal(out, &fromCaddyfile); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &fromJSON); err != nil {
		t.Fatalf("caddy.json.example: %v", err)
	}
	if !reflect.DeepEqual(fromCaddyfile, fromJSON) {
		t.Fatalf("caddy.json.example differs from the adapted Caddyfile.example; regenerate it with\n\tcaddy adapt --config Caddyfile.example --pretty")
	}
}

// demoPorts are the ports the example configs listen on: the edge's web
// and TCP ports, the machines' (3000, 7000) and Caddy's admin endpoint.
var demoPorts = []int{2019, 3000, 5433, 7000, 8080, 8443, 9000, 9443}

// TestExamplesRun runs each example config as it is, in its own Caddy,
// and uses the demo the way the README shows.
func TestExamplesRun(t *testing.T) {
	requireCaddy(t)
	for _, cfg := range []string{"Caddyfile.example", "caddy.json.example"} {
		t.Run(cfg, func(t *testing.T) {
			// the demo binds fixed ports: they must be free before, and
			// held by this demo's process after
			checkPortsFree(t, demoPorts...)
			home := t.TempDir()
			var log logBuf
			p := exec.Command(caddyBin, "run", "--config", filepath.Join(moduleRoot, cfg))
			p.Env = caddyEnv(home)
			p.Stdout, p.Stderr = &log, &log
			p.SysProcAttr = dieWithTests()
			if err := p.Start(); err != nil {
				t.Fatal(err)
			}
			ownProcess(p.Process.Pid)
			exited := make(chan struct{})
			go func() { p.Wait(); close(exited) }()
			defer func() {
				p.Process.Signal(os.Interrupt) // an error when it already exited
				select {
				case <-exited:
				case <-time.After(15 * time.Second):
					p.Process.Kill()
					<-exited
				}
				if strings.Contains(log.String(), "WARNING: DATA RACE") {
					t.Errorf("data race:\n%s", log.String())
				}
			}()
			roots := caddyRoots(t, home)
			// the demo's admin endpoint is Caddy's default, as for a user
			fly := func(args ...string) (string, error) {
				cmd := exec.Command(caddyBin, append([]string{"fly"}, args...)...)
				cmd.Env = caddyEnv(home)
				out, err := cmd.CombinedOutput()
				return string(out), err
			}
			c := newClient(roots, true)
			url := "https://hello.flyedge.localhost:8443/"
			var body string
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
				select {
				case <-exited:
					t.Fatalf("caddy exited:\n%s", log.String())
				default:
				}
				if resp, err := c.Get(url); err == nil {
					b := make([]byte, 512)
					n, _ := resp.Body.Read(b)
					resp.Body.Close()
					body = string(b[:n])
					if resp.StatusCode == http.StatusOK {
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("the demo did not answer on %s (last body %q):\n%s", url, body, log.String())
				}
			}
			checkOwnListeners(t, demoPorts...)
			if strings.Contains(log.String(), `without \"transport fly\"`) {
				t.Errorf("the demo's site cannot fail over:\n%s", log.String())
			}
			if !strings.Contains(body, " in iad ") {
				t.Errorf("nearest machine: %q, want one in iad", body)
			}
			for _, tc := range []struct{ prefer, want string }{
				{"lhr", "machine 9185e0ea6c3d28 in lhr"},
				{"au,eu", "machine e784079b449483 in syd"},
			} {
				resp, b, _ := get(t, c, url, map[string]string{"Fly-Prefer-Region": tc.prefer})
				if resp.StatusCode != http.StatusOK || !strings.Contains(b, tc.want) {
					t.Errorf("Fly-Prefer-Region: %s: %d %q, want %q", tc.prefer, resp.StatusCode, b, tc.want)
				}
			}
			// hello joined the shared address on its first start
			if out, err := fly("ips", "list", "-a", "hello"); err != nil || !strings.Contains(out, "127.0.0.1  public (shared)") {
				t.Errorf("caddy fly ips list -a hello: %v\n%s", err, out)
			}
			// the TCP app has no address until it gets one: pass-through on
			// its dedicated address, TLS (ALPN "echo") on the shared one
			if c, err := net.DialTimeout("tcp", "127.30.0.1:9000", 5*time.Second); err == nil {
				c.SetDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(c, "hello\n")
				if b, _ := io.ReadAll(c); len(b) > 0 {
					t.Errorf("echo answered on an address it does not hold: %q", b)
				}
				c.Close()
			}
			echoV4 := allocateWithCLI(t, fly, "echo")
			if _, err := fly("ips", "allocate-v4", "--shared", "-a", "echo"); err != nil {
				t.Fatal(err)
			}
			raw, err := net.DialTimeout("tcp", echoV4+":9000", 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			// echo's pass-through on 8443, the port of hello's HTTPS
			mixed, err := net.DialTimeout("tcp", echoV4+":8443", 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			tc, err := tls.Dial("tcp", "127.0.0.1:9443", &tls.Config{ServerName: "echo.flyedge.localhost", RootCAs: roots, NextProtos: []string{"echo"}})
			if err != nil {
				t.Fatalf("TLS to the echo app: %v", err)
			}
			for _, conn := range []net.Conn{raw, mixed, tc} {
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				fmt.Fprintf(conn, "hello\n")
				line, err := bufio.NewReader(conn).ReadString('\n')
				if err != nil || line != "hello\n" {
					t.Errorf("echo through %s: %q, %v", conn.RemoteAddr(), line, err)
				}
				conn.Close()
			}
			// echo's udp service, on its dedicated address only
			for _, to := range []string{echoV4 + ":9053", "127.0.0.1:9053"} {
				uc, err := net.Dial("udp4", to)
				if err != nil {
					t.Fatal(err)
				}
				uc.SetDeadline(time.Now().Add(2 * time.Second))
				fmt.Fprintf(uc, "hello\n")
				b := make([]byte, 100)
				n, err := uc.Read(b)
				switch {
				case to == "127.0.0.1:9053" && err == nil:
					t.Errorf("UDP on the shared address answered %q", b[:n])
				case to != "127.0.0.1:9053" && (err != nil || string(b[:n]) != "hello\n"):
					t.Errorf("UDP echo through %s: %q, %v", to, b[:n], err)
				}
				uc.Close()
			}

			// the PostgreSQL app, when this host runs PostgreSQL
			if pg, err := net.DialTimeout("tcp", testkit.PostgresAddr, time.Second); err == nil {
				pg.Close()
				dbV4 := allocateWithCLI(t, fly, "db")
				out, err := exec.Command("psql", "host="+dbV4+" port=5433 user=postgres dbname=test sslmode=require connect_timeout=5", "-Atc", "select 'db ' || (20 + 22)").CombinedOutput()
				if err != nil || strings.TrimSpace(string(out)) != "db 42" {
					t.Errorf("psql through the example's pg_tls port: %v\n%s", err, out)
				}
			} else if os.Getenv("CI") == "true" {
				t.Errorf("PostgreSQL is not running at %s: %v", testkit.PostgresAddr, err)
			} else {
				t.Logf("PostgreSQL is not running at %s, so the db app is not tried: %v", testkit.PostgresAddr, err)
			}

			// hello's default_self_signed: no SNI on its own address
			helloV4 := allocateWithCLI(t, fly, "hello")
			if sc, err := tls.Dial("tcp", helloV4+":8443", &tls.Config{InsecureSkipVerify: true}); err != nil {
				t.Errorf("hello without SNI: %v", err)
			} else {
				if cn := sc.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "flyedge self-signed" {
					t.Errorf("hello without SNI got the certificate of %q, want the self-signed one", cn)
				}
				sc.SetDeadline(time.Now().Add(10 * time.Second))
				fmt.Fprintf(sc, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", helloV4)
				if b, _ := io.ReadAll(sc); !strings.Contains(string(b), "machine ") {
					t.Errorf("hello without SNI answered %q, want a machine's answer", b)
				}
				sc.Close()
			}

			resp, _, _ := get(t, c, "http://hello.flyedge.localhost:8080/docs?page=2", nil)
			if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "https://hello.flyedge.localhost:8443/docs?page=2" {
				t.Errorf("force_https: %d Location %q", resp.StatusCode, resp.Header.Get("Location"))
			}
		})
	}
}

// allocateWithCLI runs caddy fly ips allocate-v4 -a app and returns the
// address it printed.
func allocateWithCLI(t *testing.T, fly func(...string) (string, error), app string) string {
	t.Helper()
	out, err := fly("ips", "allocate-v4", "-a", app, "--json")
	if err != nil {
		t.Fatalf("caddy fly ips allocate-v4 -a %s: %v\n%s", app, err, out)
	}
	var a struct{ Address string }
	if err := json.Unmarshal([]byte(out), &a); err != nil || a.Address == "" {
		t.Fatalf("caddy fly ips allocate-v4 --json printed %q", out)
	}
	return a.Address
}

// TestDocumentedSitesFailOver: every reverse_proxy block the README, the
// example config and the module docs show that sends requests to the
// apps' machines (dynamic fly, lb_policy fly) has transport fly, where
// failover lives: a user who copies one gets an edge that goes on to
// the next machine when one refuses connections.
func TestDocumentedSitesFailOver(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(moduleRoot, "docs", "*.md"))
	more, _ := filepath.Glob(filepath.Join(moduleRoot, "docs", "modules", "*.md"))
	files = append(append(files, more...), filepath.Join(moduleRoot, "README.md"), filepath.Join(moduleRoot, "Caddyfile.example"))
	blocks := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		for i := strings.Index(text, "reverse_proxy {"); i >= 0; {
			block := text[i:]
			depth := 0
			for j, r := range block {
				if r == '{' {
					depth++
				} else if r == '}' {
					if depth--; depth == 0 {
						block = block[:j+1]
						break
					}
				}
			}
			if strings.Contains(block, "dynamic fly") || strings.Contains(block, "lb_policy fly") {
				blocks++
				if !strings.Contains(block, "transport fly") {
					line := strings.Count(text[:i], "\n") + 1
					t.Errorf("%s:%d: reverse_proxy with the fly upstreams or policy has no transport fly, so it cannot fail over:\n%s", f, line, block)
				}
			}
			next := strings.Index(text[i+1:], "reverse_proxy {")
			if next < 0 {
				break
			}
			i += 1 + next
		}
	}
	if blocks < 5 {
		t.Fatalf("found %d documented reverse_proxy blocks; the scan is broken", blocks)
	}
}
