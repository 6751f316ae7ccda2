package flyedge_test

// The end-to-end tests build Caddy with flyedge once (TestMain), run it as
// a real process with its admin endpoint on a free loopback port, load
// each test's config through the admin API, and talk to it with Go's
// HTTP/1.1 and HTTP/2 clients over real TLS (Caddy's internal issuer).

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	caddyBin  string        // the built Caddy
	caddyHome string        // HOME/XDG dirs of the shared process
	adminAddr string        // admin endpoint of the shared process
	caddyLog  = new(logBuf) // its stdout and stderr
	setupErr  error         // why the shared process is not there
	caddyPID  int           // process ID of the shared process
)

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestMain(m *testing.M) {
	flag.Parse()
	ci := os.Getenv("CI") == "true"
	if testing.Short() {
		if ci {
			fmt.Fprintln(os.Stderr, "CI=true: -short would skip the end-to-end tests; refusing")
			os.Exit(2)
		}
		os.Exit(m.Run())
	}
	tmp, err := os.MkdirTemp("", "flyedge-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := 1
	defer func() {
		os.RemoveAll(tmp)
		os.Exit(code)
	}()

	caddyBin = filepath.Join(tmp, "caddy")
	args := []string{"build", "-o", caddyBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "./cmd/caddy")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building caddy:", err)
		return
	}

	caddyHome = filepath.Join(tmp, "home")
	adminAddr = freeAddr()
	cfg := filepath.Join(tmp, "initial.json")
	os.WriteFile(cfg, []byte(`{"admin":{"listen":"`+adminAddr+`","config":{"persist":false}}}`), 0o600)
	proc := exec.Command(caddyBin, "run", "--config", cfg)
	proc.Env = caddyEnv(caddyHome)
	proc.Stdout, proc.Stderr = caddyLog, caddyLog
	proc.SysProcAttr = dieWithTests()
	if err := proc.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "starting caddy:", err)
		return
	}
	caddyPID = proc.Process.Pid
	if setupErr = waitAdmin(adminAddr, 60*time.Second); setupErr != nil {
		fmt.Fprintln(os.Stderr, setupErr, "\n", caddyLog.String())
		proc.Process.Kill()
		proc.Wait()
		if ci {
			return
		}
	}
	code = m.Run()
	stopProcess(proc)
	if code != 0 {
		log := caddyLog.String()
		fmt.Fprintf(os.Stderr, "the end of the shared Caddy's log:\n%s\n", log[max(0, len(log)-20000):])
	}
	if strings.Contains(caddyLog.String(), "WARNING: DATA RACE") {
		fmt.Fprintln(os.Stderr, "the Caddy under test reported a data race:\n", caddyLog.String())
		code = 1
	}
}

// dieWithTests makes a child process end when the test binary does, even
// when it is killed, so no Caddy keeps holding the test ports (Caddy
// binds with SO_REUSEPORT: a leftover one would silently take
// connections).
func dieWithTests() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// caddyEnv keeps a Caddy's storage and config out of the user's home.
func caddyEnv(home string) []string {
	return append(os.Environ(), "HOME="+home, "XDG_DATA_HOME="+filepath.Join(home, "data"), "XDG_CONFIG_HOME="+filepath.Join(home, "config"))
}

func stopProcess(p *exec.Cmd) {
	p.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { p.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		p.Process.Kill()
		<-done
	}
}

func waitAdmin(addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr + "/config/")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("caddy admin endpoint %s did not answer within %v", addr, limit)
}

// handedOut are the ports freeAddr gave this run: the kernel may offer a
// port again once its listener is closed, and two services of one test
// config must not get the same one.
var handedOut sync.Map

// freeAddr returns a loopback address with a port nothing listens on and
// that no earlier call returned.
func freeAddr() string {
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if _, seen := handedOut.LoadOrStore(addr, true); !seen {
			return addr
		}
	}
}

func freePort() string {
	_, port, _ := net.SplitHostPort(freeAddr())
	return port
}

// requireCaddy skips or fails a test when the shared Caddy is not there.
func requireCaddy(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	if setupErr != nil {
		t.Fatal(setupErr)
	}
}

// adminClient opens a connection per call: Caddy may restart its admin
// server when it loads a config, and a POST is not retried on a stale
// keep-alive connection.
var adminClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}

// load posts a config to the shared Caddy; it returns the admin API's
// error for a config Caddy refuses.
func load(t *testing.T, config, adapter string) error {
	t.Helper()
	ct := "application/json"
	if adapter == "caddyfile" {
		ct = "text/caddyfile"
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+adminAddr+"/load", strings.NewReader(config))
	req.Header.Set("Content-Type", ct)
	resp, err := adminClient.Do(req)
	if err != nil {
		t.Fatalf("loading config: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		json.Unmarshal(body, &e)
		return fmt.Errorf("%d: %s", resp.StatusCode, e.Error)
	}
	return nil
}

func mustLoad(t *testing.T, config string) {
	t.Helper()
	if err := load(t, config, "caddyfile"); err != nil {
		t.Fatalf("loading config: %v\n%s", err, config)
	}
}

// caddyRoots returns the root of the Caddy's internal CA.
func caddyRoots(t *testing.T, home string) *x509.CertPool {
	t.Helper()
	return storageRoots(t, filepath.Join(home, "data", "caddy"))
}

// storageRoots returns the root of the internal CA in a Caddy storage
// folder.
func storageRoots(t *testing.T, storage string) *x509.CertPool {
	t.Helper()
	path := filepath.Join(storage, "pki", "authorities", "local", "root.crt")
	var pem []byte
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if pem, _ = os.ReadFile(path); len(pem) > 0 {
			break
		}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("no CA root at %s", path)
	}
	return pool
}

// newClient returns a client that connects every host name to
// 127.0.0.1 on the URL's port (like curl --resolve), trusts roots, does
// not follow redirects, and speaks HTTP/2 over TLS when h2 is set and
// HTTP/1.1 otherwise.
func newClient(roots *x509.CertPool, h2 bool) *http.Client { return clientVia(roots, "127.0.0.1", h2) }

// clientVia is newClient connecting to ip instead of 127.0.0.1.
func clientVia(roots *x509.CertPool, ip string, h2 bool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			_, port, _ := net.SplitHostPort(addr)
			return new(net.Dialer).DialContext(ctx, network, net.JoinHostPort(ip, port))
		},
		TLSClientConfig:   &tls.Config{RootCAs: roots},
		ForceAttemptHTTP2: h2,
	}
	if !h2 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return &http.Client{
		Transport:     tr,
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
