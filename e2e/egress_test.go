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
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
)

// requireNetns skips (or fails under CI=true) a test that needs to create
// network namespaces and nftables rules: root, ip and nft.
func requireNetns(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true: this test needs %v (Debian: iproute2, nftables)", missing)
	}
	t.Skipf("needs %v", missing)
}

// lab is a set of network namespaces the test creates: a router r, a
// server s beyond it, and machines m1 (IPv4), m2 (IPv4), m3 (IPv6), each
// on a veth pair to the router.
type lab struct {
	t    *testing.T
	name func(string) string
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newLab(t *testing.T) *lab {
	t.Helper()
	id := fmt.Sprintf("fe%d", os.Getpid()%100000)
	l := &lab{t: t, name: func(n string) string { return id + n }}
	for _, n := range []string{"r", "s", "m1", "m2", "m3"} {
		run(t, "ip", "netns", "add", l.name(n))
		t.Cleanup(func() { exec.Command("ip", "netns", "del", l.name(n)).Run() })
		l.in(n, "ip", "link", "set", "lo", "up")
	}
	link := func(n string, addrs, routerAddrs []string, routes ...string) {
		a, b := l.name(n), l.name(n)+"r"
		run(t, "ip", "link", "add", a, "type", "veth", "peer", "name", b)
		run(t, "ip", "link", "set", a, "netns", l.name(n))
		run(t, "ip", "link", "set", b, "netns", l.name("r"))
		for _, addr := range addrs {
			l.in(n, "ip", "addr", "add", addr, "dev", a, "nodad")
		}
		for _, addr := range routerAddrs {
			l.in("r", "ip", "addr", "add", addr, "dev", b, "nodad")
		}
		l.in(n, "ip", "link", "set", a, "up")
		l.in("r", "ip", "link", "set", b, "up")
		for _, r := range routes {
			l.in(n, append([]string{"ip"}, strings.Fields(r)...)...)
		}
	}
	link("m1", []string{"10.77.1.2/24"}, []string{"10.77.1.1/24"}, "route add default via 10.77.1.1")
	link("m2", []string{"10.77.2.2/24"}, []string{"10.77.2.1/24"}, "route add default via 10.77.2.1")
	link("m3", []string{"fd77:3::2/64"}, []string{"fd77:3::1/64"}, "-6 route add default via fd77:3::1")
	link("s", []string{"10.77.9.2/24", "fd77:9::2/64"}, []string{"10.77.9.1/24", "fd77:9::1/64"},
		"route add 10.77.0.0/16 via 10.77.9.1", "-6 route add fd77::/16 via fd77:9::1")
	l.in("r", "sysctl", "-qw", "net.ipv4.ip_forward=1")
	l.in("r", "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	return l
}

// in runs a command in namespace n.
func (l *lab) in(n string, args ...string) string {
	l.t.Helper()
	return run(l.t, append([]string{"ip", "netns", "exec", l.name(n)}, args...)...)
}

// do runs fn on a thread in namespace n: sockets fn opens live there.
// The thread goes back to the test's namespace afterwards and lives on:
// a thread that ended would fire the Pdeathsig of the processes it
// started (the Caddys under test).
func (l *lab) do(n string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open("/run/netns/" + l.name(n))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = fn()
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread() // else the thread ends with the goroutine
		}
		errc <- err
	}()
	return <-errc
}

// serveSource listens in namespace s on port 9999 (IPv4 and IPv6) and
// answers each connection with the address it came from.
func (l *lab) serveSource() {
	l.t.Helper()
	var ln net.Listener
	if err := l.do("s", func() (err error) { ln, err = net.Listen("tcp", ":9999"); return }); err != nil {
		l.t.Fatal(err)
	}
	testkit.Serve(l.t, ln, func(c net.Conn) {
		host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
		fmt.Fprintln(c, host)
		c.Close()
	})
}

// sourceFrom connects from namespace n to the server and returns the
// address the server saw.
func (l *lab) sourceFrom(n, server string) string {
	l.t.Helper()
	var got string
	err := l.do(n, func() error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(server, "9999"), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		got, err = bufio.NewReader(c).ReadString('\n')
		got = strings.TrimSpace(got)
		return err
	})
	if err != nil {
		l.t.Fatalf("connecting from %s to %s: %v", n, server, err)
	}
	return got
}

const egressEdge = `{
	admin unix/%[1]s
	persist_config off
	storage file_system %[2]s
	fly {
		region iad
		app web {
			machine 0000000000e101 iad 10.77.1.2
			machine 0000000000e102 iad 10.77.2.2
			machine 0000000000e103 iad fd77:3::2
		}
	}
	fly_ips {
		egress_v4 10.77.200.0/24
		egress_v6 fd77:200::/120
		apply_egress_rules
	}
}
`

// TestEgressRules runs an edge in a router namespace with three machines
// behind it and a server beyond it: a machine with an egress pair
// reaches the server from its egress address (IPv4 and IPv6), one
// without from its own, and a release takes effect; the CLI prints and
// installs the same rules in one transaction, leaving other tables be.
func TestEgressRules(t *testing.T) {
	requireCaddy(t)
	requireNetns(t)
	l := newLab(t)
	l.serveSource()
	l.in("r", "nft", "add table ip other; add chain ip other keep")

	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	cfg := filepath.Join(dir, "Caddyfile")
	os.WriteFile(cfg, fmt.Appendf(nil, egressEdge, sock, filepath.Join(dir, "storage")), 0o600)
	home := filepath.Join(dir, "home")
	proc := exec.Command("ip", "netns", "exec", l.name("r"), caddyBin, "run", "--config", cfg, "--adapter", "caddyfile")
	proc.Env = caddyEnv(home)
	var log logBuf
	proc.Stdout, proc.Stderr = &log, &log
	proc.SysProcAttr = dieWithTests()
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	ownProcess(proc.Process.Pid)
	t.Cleanup(func() {
		stopProcess(proc)
		if t.Failed() {
			t.Logf("the edge's log:\n%s", log.String())
		}
	})
	admin := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return new(net.Dialer).DialContext(ctx, "unix", sock)
		}}}
	api := func(method, path string, out any) int {
		t.Helper()
		req, _ := http.NewRequest(method, "http://localhost"+path, nil)
		resp, err := admin.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
			}
		}
		return resp.StatusCode
	}
	waitFor(t, "the edge's admin socket", func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	waitFor(t, "the edge's (empty) egress table", func() bool {
		return exec.Command("ip", "netns", "exec", l.name("r"), "nft", "list", "table", "inet", "flyedge_egress").Run() == nil
	})

	type pair struct{ V4, V6 string }
	var p1, p3 pair
	if s := api(http.MethodPost, "/fly/apps/web/machines/0000000000e101/egress-ips", &p1); s != http.StatusCreated {
		t.Fatalf("allocate for m1: %d", s)
	}
	if s := api(http.MethodPost, "/fly/apps/web/machines/0000000000e103/egress-ips", &p3); s != http.StatusCreated {
		t.Fatalf("allocate for m3: %d", s)
	}

	// the edge applies the rules just after the change (off the store's
	// path): wait for them before connecting, so no connection meets the
	// table being replaced
	rules := func() string {
		out, _ := exec.Command("ip", "netns", "exec", l.name("r"), "nft", "list", "table", "inet", "flyedge_egress").Output()
		return string(out)
	}
	waitFor(t, "the rules of m1 and m3", func() bool {
		r := rules()
		return strings.Contains(r, "10.77.1.2") && strings.Contains(r, "fd77:3::2")
	})
	if got := l.sourceFrom("m1", "10.77.9.2"); got != p1.V4 {
		t.Errorf("m1 (egress pair %s) reached the server from %s", p1.V4, got)
	}
	if got := l.sourceFrom("m2", "10.77.9.2"); got != "10.77.2.2" {
		t.Errorf("m2 (no egress pair) reached the server from %s; want its own address", got)
	}
	if got := l.sourceFrom("m3", "fd77:9::2"); got != p3.V6 {
		t.Errorf("m3 (egress pair %s) reached the server over IPv6 from %s", p3.V6, got)
	}

	// a release takes effect: m1 leaves from its own address again
	if s := api(http.MethodDelete, "/fly/apps/web/machines/0000000000e101/egress-ips/"+p1.V4, nil); s != http.StatusNoContent {
		t.Fatalf("release m1's pair: %d", s)
	}
	waitFor(t, "m1's rule to go", func() bool { return !strings.Contains(rules(), "10.77.1.2") })
	if got := l.sourceFrom("m1", "10.77.9.2"); got != "10.77.1.2" {
		t.Errorf("after the release m1 reached the server from %s; want 10.77.1.2", got)
	}

	// the CLI prints the rules, and --apply installs them in one go
	printed := run(t, caddyBin, "fly", "machine", "egress-ip", "rules", "--address", "unix/"+sock)
	want := "ip6 saddr fd77:3::2 snat ip6 to " + p3.V6 + ` comment "app web machine 0000000000e103"`
	if !strings.Contains(printed, want) || strings.Contains(printed, "10.77.1.2") {
		t.Fatalf("caddy fly machine egress-ip rules:\n%s\nwant the rule %q and none for m1", printed, want)
	}
	l.in("r", "nft", "delete", "table", "inet", "flyedge_egress")
	if got := l.sourceFrom("m3", "fd77:9::2"); got != "fd77:3::2" {
		t.Fatalf("without the table m3 reached the server from %s", got)
	}
	out := l.in("r", caddyBin, "fly", "machine", "egress-ip", "rules", "--apply", "--address", "unix/"+sock)
	if !strings.Contains(out, "Applied 1 egress rules") {
		t.Errorf("--apply: %q", out)
	}
	if got := l.sourceFrom("m3", "fd77:9::2"); got != p3.V6 {
		t.Errorf("after --apply m3 reached the server from %s; want %s", got, p3.V6)
	}
	l.in("r", caddyBin, "fly", "machine", "egress-ip", "rules", "--apply", "--address", "unix/"+sock) // again: replaces, no duplicates
	if rules := l.in("r", "nft", "list", "table", "inet", "flyedge_egress"); strings.Count(rules, "snat") != 1 {
		t.Errorf("after two --apply the table has %d rules:\n%s", strings.Count(rules, "snat"), rules)
	}
	if err := exec.Command("ip", "netns", "exec", l.name("r"), "nft", "list", "chain", "ip", "other", "keep").Run(); err != nil {
		t.Errorf("the router's other table was touched: %v", err)
	}
}

// TestEgressIPs: a machine gets a static (v4, v6) pair through the CLI;
// it stays with the machine until released.
func TestEgressIPs(t *testing.T) {
	requireCaddy(t)
	storage := t.TempDir()
	cfg := fmt.Sprintf(`{
	admin %s
	persist_config off
	storage file_system %s
	fly {
		app worker {
			machine 0000000000e001 iad 127.0.0.1
			machine 0000000000e002 fra 127.0.0.1
		}
	}
	fly_ips {
		egress_v4 127.40.0.0/30
		egress_v6 fd00:e9::/64
	}
}
`, adminAddr, storage)
	mustLoad(t, cfg)
	cli := func(args ...string) (string, error) {
		out, err := exec.Command(caddyBin, append(append([]string{"fly", "machine", "egress-ip"}, args...), "-a", "worker", "--address", adminAddr)...).CombinedOutput()
		return string(out), err
	}
	out, err := cli("allocate", "0000000000e001")
	if err != nil || !strings.Contains(out, "Machine 0000000000e001 egress: 127.40.0.1, fd00:e9::1") {
		t.Fatalf("egress-ip allocate: %v\n%s", err, out)
	}
	out, err = cli("allocate", "0000000000e002")
	if err != nil || !strings.Contains(out, "127.40.0.2, fd00:e9::2") {
		t.Fatalf("egress-ip allocate: %v\n%s", err, out)
	}
	if out, err := cli("allocate", "0000000000e003"); err == nil || !strings.Contains(out, "app worker has no machine 0000000000e003 (HTTP 404)") {
		t.Errorf("unknown machine: %v\n%s", err, out)
	}
	if out, err := cli("allocate", "0000000000e001"); err == nil || !strings.Contains(out, "already has the egress pair") {
		t.Errorf("second pair: %v\n%s", err, out)
	}
	// the pair stays across a reload
	mustLoad(t, cfg)
	out, err = cli("list")
	if err != nil || !strings.Contains(out, "0000000000e001  127.40.0.1  fd00:e9::1") || !strings.Contains(out, "0000000000e002  127.40.0.2  fd00:e9::2") {
		t.Fatalf("egress-ip list: %v\n%s", err, out)
	}
	out, err = cli("release", "fd00:e9::1")
	if err != nil || !strings.Contains(out, "Released egress pair 127.40.0.1, fd00:e9::1 of machine 0000000000e001") {
		t.Fatalf("egress-ip release: %v\n%s", err, out)
	}
	// the /30 has two addresses; the released one is free again
	out, err = cli("allocate", "0000000000e001")
	if err != nil || !strings.Contains(out, "127.40.0.1") {
		t.Fatalf("allocate after release: %v\n%s", err, out)
	}
}
