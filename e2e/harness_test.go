package e2e

// The end-to-end tests build Caddy with flyedge once (TestMain), run it as
// a real process with its admin endpoint on a free loopback port, load
// each test's config through the admin API, and talk to it with Go's
// HTTP/1.1 and HTTP/2 clients over real TLS (Caddy's internal issuer).
//
// A file per step of the data path (DESIGN.md), named for it: listen
// (the edge's ports), resolve (the app of a connection), handle_http,
// handle_replay, handle_tls, handle_l4, handle_proxyproto, pgtls and udp
// (the handlers), select and limits (the machine), egress (the
// machines' way out), state, store_pg and admin (apps, addresses and
// machines as live data, their storage, the admin API and CLI), flytoml
// (fly.toml in), metrics, bounds (how long a client that says nothing,
// too little or slowly is held), and start, examples and readme (Caddy
// started as users start it). Helpers that other packages' tests use too are in
// internal/testkit.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
)

// moduleRoot is the module's folder, seen from this package's: the
// tests build ./cmd/caddy there and read the examples and docs there.
const moduleRoot = ".."

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
	build.Dir = moduleRoot
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
	ownProcess(caddyPID)
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

// freeAddr returns a loopback address with a port nothing listens on
// (TCP or UDP, on any address) and that no earlier call returned. The
// port is below the kernel's ephemeral range (32768-60999), where a
// test's own outgoing connections (hundreds, in the limits tests) could
// take it before the edge binds it.
func freeAddr() string {
	for {
		port := strconv.Itoa(10000 + rand.IntN(32768-10000))
		ln, err := net.Listen("tcp", ":"+port)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", ":"+port)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		addr := "127.0.0.1:" + port
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
// freePortPair returns two consecutive free ports, for a port range.
func freePortPair() (string, string) {
	for {
		lo := freePort()
		n, _ := strconv.Atoi(lo)
		hi := strconv.Itoa(n + 1)
		if l, err := net.Listen("tcp", ":"+hi); err == nil {
			l.Close()
			return lo, hi
		}
	}
}

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
	checkOwnListeners(t)
	return nil
}

// checkPortsFree fails the test when anything listens on one of ports.
func checkPortsFree(t *testing.T, ports ...int) {
	t.Helper()
	for _, port := range listeningOn(t, ports) {
		t.Fatalf("port %d is taken by another process; this test needs it", port)
	}
}

// listeningOn returns the sockets listening on ports (none: every port
// freeAddr handed out), by inode.
func listeningOn(t *testing.T, ports []int) map[string]int {
	t.Helper()
	want := map[int]bool{}
	for _, p := range ports {
		want[p] = true
	}
	if len(ports) == 0 {
		handedOut.Range(func(k, _ any) bool {
			_, p, _ := net.SplitHostPort(k.(string))
			n, _ := strconv.Atoi(p)
			want[n] = true
			return true
		})
	}
	listening := map[string]int{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("checking who listens: %v", err)
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" { // LISTEN
				continue
			}
			_, hexPort, _ := strings.Cut(fs[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); err == nil && want[int(p)] {
				listening[fs[9]] = int(p)
			}
		}
	}
	return listening
}

// socketOwner names the process that holds socket inode, as well as it
// can.
func socketOwner(inode string) string {
	pid := socketPID(inode)
	if pid == 0 {
		return "a process that is gone"
	}
	cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return fmt.Sprintf("process %d (%s)", pid, strings.ReplaceAll(strings.TrimSpace(string(cmd)), "\x00", " "))
}

// socketPID returns the process that holds socket inode, or 0.
func socketPID(inode string) int {
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); l == "socket:["+inode+"]" {
				return pid
			}
		}
	}
	return 0
}

// ownPIDs are the processes the tests started (Caddy, peers).
var ownPIDs sync.Map

// ownProcess records a process the tests started.
func ownProcess(pid int) { ownPIDs.Store(pid, true) }

// checkOwnListeners fails the test when a socket listening on one of
// ports (none: every port freeAddr handed out) belongs to a process the
// tests did not start. Caddy binds with SO_REUSEPORT, so a stray Caddy on
// the same port would silently answer some of the connections.
func checkOwnListeners(t *testing.T, ports ...int) {
	t.Helper()
	listening := listeningOn(t, ports)
	if len(listening) == 0 {
		return
	}
	mine := map[string]bool{}
	pids := []int{os.Getpid()}
	ownPIDs.Range(func(k, _ any) bool { pids = append(pids, k.(int)); return true })
	for _, pid := range pids {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil {
				mine[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
			}
		}
	}
	still := listeningOn(t, ports) // a listener of an old config may close meanwhile
	for inode, port := range listening {
		if _, ok := still[inode]; ok && !mine[inode] {
			t.Fatalf("port %d: %s, which these tests did not start, listens on it too (Caddy binds with SO_REUSEPORT, so it would take connections); stop it", port, socketOwner(inode))
		}
	}
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

type testMachine struct {
	id, region, ip string
}

// startMachines serves each machine on ip:port (testkit.HTTPMachine:
// HTTP/1.1 and h2c, answering with the JSON of what it received). It
// returns each machine's server so a test can take one down.
func startMachines(t *testing.T, port string, ms ...testMachine) map[string]*http.Server {
	t.Helper()
	servers := map[string]*http.Server{}
	for _, m := range ms {
		servers[m.id] = testkit.HTTPMachine(t, net.JoinHostPort(m.ip, port), m.id, m.region)
	}
	return servers
}

// get sends a GET and decodes what the machine saw, nil when the
// answer did not come from a machine.
func get(t *testing.T, c *http.Client, url string, hdr map[string]string) (*http.Response, string, *testkit.Seen) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var s testkit.Seen
	if resp.Header.Get("Content-Type") == "application/json" && json.Unmarshal(body, &s) == nil && s.Machine != "" {
		return resp, string(body), &s
	}
	return resp, string(body), nil
}

// waitFor polls cond for up to 10 s: health changes take a check
// interval.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitUntil(t, what, 10*time.Second, cond)
}

// waitUntil polls cond for up to limit.
func waitUntil(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// portOf returns the port of a URL.
func portOf(url string) string {
	host := strings.SplitN(strings.SplitN(url, "://", 2)[1], "/", 2)[0]
	_, port, _ := net.SplitHostPort(host)
	return port
}

// call sends a request to an admin API and decodes the JSON answer into
// out (when not nil); it returns the status and the raw body.
func call(t *testing.T, admin, method, path, body string, out any) (int, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, "http://"+admin+path, r)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
	return resp.StatusCode, string(b)
}

type assignment struct {
	Address string `json:"address"`
	Type    string `json:"type"`
	App     string `json:"app"`
	Region  string `json:"region"`
}

// allocate asks the admin API for an address and fails the test unless
// it is given.
func allocate(t *testing.T, admin, app, typ string) string {
	t.Helper()
	var a assignment
	status, body := call(t, admin, http.MethodPost, "/fly/apps/"+app+"/ips", `{"type":"`+typ+`"}`, &a)
	if status != http.StatusCreated && status != http.StatusOK {
		t.Fatalf("allocating %s for %s: %d %s", typ, app, status, body)
	}
	return a.Address
}

// via returns a client that connects every host name to ip on the URL's
// port, like curl --resolve <host>:<port>:<ip>, and trusts roots.
func via(roots *x509.CertPool, ip string) *http.Client { return clientVia(roots, ip, true) }

// machineOf returns the machine that answered a GET, or an error when
// the edge gave the request to no app.
func machineOf(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var s testkit.Seen
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return "", fmt.Errorf("status %d, not a machine's answer: %v", resp.StatusCode, err)
	}
	return s.Machine, nil
}

// startSinks serves each machine with the sink protocol: read everything
// the client sends until it half-closes, then answer
// "<machine id> <sha256 of what it read>\n" followed by n bytes of the
// stream seeded with the machine ID, and close.
func startSinks(t *testing.T, port string, reply int64, ms ...testMachine) map[string]*sink {
	t.Helper()
	sinks := map[string]*sink{}
	for _, m := range ms {
		ln, err := net.Listen("tcp", net.JoinHostPort(m.ip, port))
		if err != nil {
			t.Fatalf("machine %s: %v", m.id, err)
		}
		s := &sink{Listener: ln}
		sinks[m.id] = s
		testkit.Serve(t, ln, func(c net.Conn) {
			defer c.Close()
			s.accepted.Add(1)
			h := sha256.New()
			if _, err := io.Copy(h, c); err != nil {
				return
			}
			fmt.Fprintf(c, "%s %x\n", m.id, h.Sum(nil))
			io.CopyN(c, stream(m.id), reply)
		})
	}
	return sinks
}

// sink is a machine startSinks serves: closing it takes the machine
// down; accepted counts the connections it took.
type sink struct {
	net.Listener
	accepted atomic.Int64
}

// stream is a deterministic byte stream.
func stream(seed string) io.Reader {
	var s [32]byte
	copy(s[:], seed)
	return rand.NewChaCha8(s)
}

// exchange sends n bytes of stream(seed) through addr, half-closes, and
// returns the machine's answer line and a hash of the rest.
func exchange(t *testing.T, addr string, n int64, seed string) (id, gotHash string, replyHash string, replyLen int64) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	sent := make(chan error, 1)
	go func() {
		_, err := io.CopyN(c, stream(seed), n)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		sent <- err
	}()
	r := bufio.NewReaderSize(c, 64*1024)
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the machine's answer: %v", err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("sending: %v", err)
	}
	h := sha256.New()
	replyLen, err = io.Copy(h, r)
	if err != nil {
		t.Fatalf("reading the reply: %v", err)
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		t.Fatalf("answer %q", line)
	}
	return f[0], f[1], hex.EncodeToString(h.Sum(nil)), replyLen
}

func hashOf(r io.Reader, n int64) string {
	h := sha256.New()
	io.CopyN(h, r, n)
	return hex.EncodeToString(h.Sum(nil))
}

// requireTool finds a peer program: outside CI a missing one skips the
// test, under CI=true it fails (.ci/run installs them).
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed (apt-get install -y %s)", name, name)
		}
		t.Skipf("%s is not installed (apt-get install -y %s)", name, name)
	}
	return path
}

// startPeer runs a peer server process until the test ends.
func startPeer(t *testing.T, name string, args ...string) {
	t.Helper()
	var log logBuf
	p := exec.Command(name, args...)
	p.Stdout, p.Stderr = &log, &log
	p.SysProcAttr = dieWithTests()
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	ownProcess(p.Process.Pid)
	t.Cleanup(func() {
		p.Process.Kill()
		p.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, log.String())
		}
	})
}

// waitListening waits until addr accepts connections.
func waitListening(t *testing.T, addr string) {
	t.Helper()
	waitFor(t, addr+" to listen", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// requirePostgres skips a test, or fails it under CI=true, when the
// shared Caddy or the machine's PostgreSQL server is not there.
func requirePostgres(t *testing.T) {
	t.Helper()
	requireCaddy(t)
	testkit.RequirePostgres(t)
}

// testDatabase is testkit.ScratchDB for a test of the shared Caddy: a
// database and role of the test's own, dropped when it ends.
func testDatabase(t *testing.T) string {
	t.Helper()
	requireCaddy(t)
	return testkit.ScratchDB(t)
}

// openFiles counts the open file descriptors of a process.
func openFiles(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// Addresses of the IP assignment tests: 127.0.0.0/8 is all local on
// Linux, so the edge's "anycast" addresses are loopback ones.
const (
	sharedV4 = "127.20.0.1"
	v4Pool   = "127.30.0.0/24"
)

// edgeCount numbers the edges the tests load, so that each gets a base
// domain of its own: Caddy caches certificates across configs.
var edgeCount int

// storageNode is a Caddy process of its own (not the shared one) with
// the apps app0..app99 and IP pools, on a storage folder that other
// nodes may share. It listens on nothing but its admin endpoint.
type storageNode struct {
	admin string
	proc  *exec.Cmd
	log   *logBuf
}

// storageLine is the Caddyfile storage option for storage: a folder, or
// a PostgreSQL DSN.
func storageLine(storage string) string {
	if strings.HasPrefix(storage, "postgres://") {
		return "storage postgres " + storage
	}
	return "storage file_system " + storage
}

func startStorageNode(t *testing.T, storage string) *storageNode {
	t.Helper()
	requireCaddy(t)
	n := &storageNode{admin: freeAddr(), log: new(logBuf)}
	var apps strings.Builder
	for i := range 100 {
		fmt.Fprintf(&apps, "\t\tapp app%d {\n\t\t\tservice 8080 {\n\t\t\t\tport 443 tls http\n\t\t\t}\n\t\t}\n", i)
	}
	cfg := fmt.Sprintf(`{
	admin %s
	persist_config off
	%s
	fly {
		base_domain edge.test
%s	}
	fly_ips {
		v6 fd00:fe::/64
		shared_v4 `+sharedV4+`
		v4 `+v4Pool+`
		auto_allocate off
	}
}
`, n.admin, storageLine(storage), apps.String())
	dir := t.TempDir()
	file := dir + "/Caddyfile"
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	n.proc = exec.Command(caddyBin, "run", "--config", file, "--adapter", "caddyfile")
	n.proc.Env = caddyEnv(dir)
	n.proc.Stdout, n.proc.Stderr = n.log, n.log
	n.proc.SysProcAttr = dieWithTests()
	if err := n.proc.Start(); err != nil {
		t.Fatal(err)
	}
	ownProcess(n.proc.Process.Pid)
	t.Cleanup(func() {
		if n.proc.ProcessState == nil {
			stopProcess(n.proc)
		}
	})
	if err := waitAdmin(n.admin, 60*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, n.log)
	}
	return n
}

func (n *storageNode) ips(t *testing.T) []assignment {
	t.Helper()
	var out []assignment
	if status, body := call(t, n.admin, http.MethodGet, "/fly/ips", "", &out); status != http.StatusOK {
		t.Fatalf("GET /fly/ips: %d %s", status, body)
	}
	return out
}

// fly runs `caddy fly args...` against admin and returns its output.
func fly(t *testing.T, admin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(caddyBin, append(append([]string{"fly"}, args...), "--address", admin)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must returns v, and panics on err.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
