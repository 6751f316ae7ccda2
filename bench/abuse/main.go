// Command abuse measures what a hostile tenant does to a victim app on
// the same flyedge edge: the victim's machine is probed at a steady rate
// over HTTP through the edge before, during and after each attack, and
// when an attack ends every port of the edge must serve again. Each
// attack runs against an edge of its own (a fresh process and storage),
// under a lower descriptor limit than the bench's, so that a shortage is
// reachable. Run it through bench/abuse.sh; see bench/README.md.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The bench's addresses and ports, all on loopback and below 32768.
const (
	adminAddr   = "127.0.0.1:17019"
	sharedV4    = "127.0.70.10" // the edge's shared IPv4 address
	v4Pool      = "127.32.0.0/24"
	nowhereAddr = "127.0.70.99" // an address no app holds
	victimIP    = "127.0.70.1"  // the victim's machine
	attackerIP  = "127.0.70.2"  // the attacker's machine
	attackerSrc = "127.0.71.1"  // the attacker's TCP clients: one host (the victim's client is 127.0.0.1)
	passPort    = "17000"       // edge port: the attacker's pass-through service
	httpPort    = "17080"       // edge port: Fly's 80
	httpsPort   = "17443"       // edge port: Fly's 443
	udpPort     = "17053"       // edge UDP port: the attacker's udp service
	victimPort  = "17001"       // the victim machine's HTTP server
	attackerTCP = "17002"       // the attacker machine's TCP and UDP echo
	attackerWeb = "17003"       // the attacker machine's HTTP server, which holds POSTs
	udpSrcBase  = 20000         // attack udp: source ports udpSrcBase.. on 127.0.72.x
	baseDomain  = "abuse.localhost"
)

var (
	caddyBin   = flag.String("caddy", "", "the flyedge Caddy binary")
	attackList = flag.String("attacks", "idle,udp,nowhere,slowloris,toml,posts", "attacks to run, in order")
	duration   = flag.Duration("duration", 10*time.Second, "length of each attack")
	phase      = flag.Duration("phase", 5*time.Second, "length of the before and after phases")
	rate       = flag.Int("rate", 20, "victim requests per second")
	timeout    = flag.Duration("timeout", 2*time.Second, "a victim request slower than this is an error")
	settle     = flag.Duration("settle", 5*time.Second, "how long to wait for each port to serve after an attack")
	edgeNofile = flag.Int("edge-nofile", 4096, "the edge's descriptor limit (soft and hard)")
	conns      = flag.Int("conns", 10000, "idle, nowhere: connections to open (bounded by the bench's own descriptor limit)")
	nowPort    = flag.String("nowhere-port", httpPort, "nowhere: the edge port to connect to")
	udpPairs   = flag.Int("udp-pairs", 20480, "udp: source address/port pairs (256 ports per address)")
	slowConns  = flag.Int("slow-conns", 200, "slowloris: connections")
	slowEvery  = flag.Duration("slow-every", 5*time.Second, "slowloris: one byte of the ClientHello per connection this often")
	checks     = flag.Int("checks", 10000, "toml: http_checks in the deployed fly.toml")
	logLevel   = flag.String("log-level", "ERROR", "the edge's log level (its log is in the run's folder, kept when the bench fails)")
	readHeader = flag.Duration("read-header", 0, "if set, the edge's HTTP server reads a request's header within this (servers fly/edge:80 { timeouts { read_header … } }); 0: Caddy's default, 1 min")
	keep       = flag.Bool("keep", false, "keep the edges' folders (config, log, storage)")
	posts      = flag.Int("posts", 256, "posts: concurrent 1 MiB POSTs held by the attacker's machine")
)

func main() {
	flag.Parse()
	if *caddyBin == "" {
		fatal(errors.New("-caddy is needed"))
	}
	limit := raiseNofile()
	fmt.Printf("bench RLIMIT_NOFILE %d, edge %d; victim at %d req/s (a new connection each, timeout %s); before/after %s, attacks %s each\n",
		limit, *edgeNofile, *rate, *timeout, *phase, *duration)
	if budget := int(limit) - *edgeNofile - 1024; *conns > budget {
		fmt.Printf("connections for idle and nowhere bounded by the descriptor limit: %d, not %d\n", budget, *conns)
		*conns = budget
	}
	m := startMachines()
	defer m.close()
	tmp, err := os.MkdirTemp("", "flyedge-abuse-")
	if err != nil {
		fatal(err)
	}
	if *keep {
		fmt.Printf("the edges' configs and logs are kept in %s\n", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}

	var rows []summary
	for _, name := range strings.Split(*attackList, ",") {
		a, ok := attacks[strings.TrimSpace(name)]
		if !ok {
			fatal(fmt.Errorf("unknown attack %q (have idle, udp, nowhere, slowloris, toml, posts)", name))
		}
		rows = append(rows, run(strings.TrimSpace(name), a, m, filepath.Join(tmp, name)))
	}
	fmt.Println()
	fmt.Println("Summary (goal: the victim keeps >= 99% of its requests during each attack; every port serves within 1 s after it ends)")
	fmt.Println()
	fmt.Println("| attack | victim ok before | during | after | p99 during ms | edge RSS MiB before / peak / after | ports serving after the end (s) | goal |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---|---|")
	for _, r := range rows {
		fmt.Printf("| %s | %s | %s | %s | %.1f | %d / %d / %d | %s | %s |\n", r.name, r.phases[0].okCell(), r.phases[1].okCell(), r.phases[2].okCell(),
			ms(r.phases[1].p99), r.phases[0].rss>>20, r.phases[1].rss>>20, r.phases[2].rss>>20, r.ports, r.verdict)
	}
}

type attack struct {
	what string
	run  func(ctx context.Context, e *edge, m *machines) string // until ctx is done; releases all it holds before it returns
}

var attacks = map[string]attack{
	"idle":      {"idle TCP connections to the attacker's pass-through port", attackIdle},
	"udp":       {"UDP datagrams from many source address/port pairs to the attacker's udp service", attackUDP},
	"nowhere":   {"connections to an address no app holds, sending nothing", attackNowhere},
	"slowloris": {"TLS slowloris: ClientHellos sent one byte at a time", attackSlowloris},
	"toml":      {"fly.toml deploys with thousands of checks through the admin API", attackTOML},
	"posts":     {"concurrent 1 MiB POSTs to the attacker's app, held by its machine", attackPosts},
}

type phaseStats struct {
	n, errs  int
	p50, p99 time.Duration
	rss      int64 // before, during: the peak; after: the last
	fds      int   // the edge's open descriptors, as rss
	firstErr string
}

func (p phaseStats) okCell() string {
	if p.n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%% (%d/%d)", 100*float64(p.n-p.errs)/float64(p.n), p.n-p.errs, p.n)
}

type summary struct {
	name    string
	phases  [3]phaseStats
	ports   string
	verdict string
}

// run starts an edge, probes the victim for the before phase, runs the
// attack, then probes the victim and the edge's ports after it.
func run(name string, a attack, m *machines, dir string) summary {
	fmt.Printf("\n== %s: %s\n", name, a.what)
	e := startEdge(dir)
	defer e.stop()
	if err := e.waitPorts(10 * time.Second); err != nil {
		fatal(fmt.Errorf("%s: the edge does not serve before the attack: %v (log: %s)", name, err, e.log))
	}
	pr := startProbe(e.cmd.Process.Pid)
	time.Sleep(*phase)
	pr.next()
	ctx, cancel := context.WithTimeout(context.Background(), *duration)
	note := a.run(ctx, e, m)
	cancel()
	pr.next() // the attack has ended: its resources are released
	ended := time.Now()
	portsc := make(chan []portResult, 1)
	go func() { portsc <- e.portsAfter(ended) }()
	time.Sleep(*phase)
	phases := pr.stop()
	ports := <-portsc
	fmt.Printf("attacker: %s\n", note)
	fmt.Printf("%-7s %8s %7s %9s %9s %8s %9s\n", "phase", "requests", "errors", "p50_ms", "p99_ms", "rss_MiB", "edge_fds")
	for i, p := range phases {
		fmt.Printf("%-7s %8d %7d %9.1f %9.1f %8d %9d\n", []string{"before", "during", "after"}[i], p.n, p.errs, ms(p.p50), ms(p.p99), p.rss>>20, p.fds)
	}
	for i, p := range phases {
		if p.firstErr != "" {
			fmt.Printf("first error %s: %s\n", []string{"before", "during", "after"}[i], p.firstErr)
		}
	}
	var cells []string
	allPorts := true
	fmt.Printf("ports after the attack ended:")
	for _, p := range ports {
		c := fmt.Sprintf("%s %.2f", p.name, p.took.Seconds())
		if p.took < 0 {
			c = fmt.Sprintf("%s >%.0f", p.name, settle.Seconds())
		}
		if p.took < 0 || p.took > time.Second {
			allPorts = false
		}
		fmt.Printf(" %s", c)
		cells = append(cells, c)
	}
	fmt.Println()
	ok99 := phases[1].n > 0 && float64(phases[1].n-phases[1].errs) >= 0.99*float64(phases[1].n)
	verdict := map[bool]string{true: "ok", false: "FAIL"}
	v := fmt.Sprintf("victim %s, ports %s", verdict[ok99], verdict[allPorts])
	fmt.Printf("goal: %s\n", v)
	return summary{name: name, phases: phases, ports: strings.Join(cells, ", "), verdict: v}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// probe sends the victim's requests at a steady rate, each on a new
// connection, and samples the edge's RSS; results go to the phase in
// which the request began.
type probe struct {
	pid   int
	phase atomic.Int32
	mu    sync.Mutex
	lat   [3][]time.Duration
	errs  [3]int
	first [3]string
	rss   [3]int64
	fds   [3]int
	stopc chan struct{}
	wg    sync.WaitGroup
}

var victimClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// attackerDialer dials from the attacker's own client address, as a
// hostile tenant's load comes from hosts of its own: the edge bounds what
// one client address holds, and a victim that shared it would share the
// bound.
func attackerDialer() *net.Dialer {
	return &net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(attackerSrc)}}
}

func startProbe(pid int) *probe {
	p := &probe{pid: pid, stopc: make(chan struct{})}
	p.wg.Go(func() {
		tick := time.NewTicker(time.Second / time.Duration(*rate))
		defer tick.Stop()
		var reqs sync.WaitGroup
		defer reqs.Wait()
		for {
			select {
			case <-p.stopc:
				return
			case <-tick.C:
			}
			ph := int(p.phase.Load())
			reqs.Go(func() {
				t0 := time.Now()
				err := victimGet(*timeout)
				d := time.Since(t0)
				p.mu.Lock()
				defer p.mu.Unlock()
				if err != nil {
					p.errs[ph]++
					if p.first[ph] == "" {
						p.first[ph] = err.Error()
					}
					return
				}
				p.lat[ph] = append(p.lat[ph], d)
			})
		}
	})
	p.wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			rss, fds := vmRSS(p.pid), openFiles(p.pid)
			ph := p.phase.Load()
			p.mu.Lock()
			if ph == 2 || rss > p.rss[ph] {
				p.rss[ph] = rss
			}
			if ph == 2 || fds > p.fds[ph] {
				p.fds[ph] = fds
			}
			p.mu.Unlock()
			select {
			case <-p.stopc:
				return
			case <-tick.C:
			}
		}
	})
	return p
}

func (p *probe) next() { p.phase.Add(1) }

func (p *probe) stop() [3]phaseStats {
	close(p.stopc)
	p.wg.Wait()
	var out [3]phaseStats
	for i := range 3 {
		l := p.lat[i]
		slices.Sort(l)
		out[i] = phaseStats{n: len(l) + p.errs[i], errs: p.errs[i], rss: p.rss[i], fds: p.fds[i], firstErr: p.first[i]}
		if len(l) > 0 {
			out[i].p50, out[i].p99 = l[len(l)/2], l[len(l)*99/100]
		}
	}
	return out
}

// victimGet sends GET / for the victim through the edge's HTTP port on
// the shared address.
func victimGet(limit time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+sharedV4+":"+httpPort+"/", nil)
	req.Host = "victim." + baseDomain
	resp, err := victimClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(b) != "victim" {
		return fmt.Errorf("%d %q", resp.StatusCode, b)
	}
	return nil
}

// openFiles counts the process's open descriptors.
func openFiles(pid int) int {
	d, err := os.Open(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0
	}
	defer d.Close()
	names, _ := d.Readdirnames(-1)
	return len(names)
}

func vmRSS(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// raiseNofile raises the bench's descriptor limit to its hard limit.
func raiseNofile() uint64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		fatal(err)
	}
	r.Cur = r.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		fatal(err)
	}
	return r.Cur
}

// edge is one flyedge Caddy, started for one attack.
type edge struct {
	dir, log   string
	cmd        *exec.Cmd
	exited     chan struct{}
	attackerV4 string // the attacker's dedicated IPv4 address
}

const edgeConfig = `{
	admin ` + adminAddr + `
	persist_config off
	storage file_system %s
	log {
		level %s
	}
	fly {
		region iad
		base_domain ` + baseDomain + `
		app victim {
			service ` + victimPort + ` {
				port ` + httpPort + ` http
				port ` + httpsPort + ` tls http
			}
			machine 0000000000a001 iad ` + victimIP + `
		}
		app attacker {
			service ` + attackerTCP + ` {
				port ` + passPort + `
			}
			service ` + attackerTCP + ` udp {
				port ` + udpPort + `
			}
			service ` + attackerWeb + ` {
				port ` + httpPort + ` http
			}
			machine 0000000000b001 iad ` + attackerIP + `
		}
	}
	fly_ips {
		shared_v4 ` + sharedV4 + `
		v4 ` + v4Pool + `
		http_port ` + httpPort + `
		https_port ` + httpsPort + `
	}
	fly_edge {
		ports ` + passPort + ` ` + httpPort + ` ` + httpsPort + `
		udp_ports ` + udpPort + `
		issuer internal
	}
%s}

http:// {
	bind fly/edge
	@app fly_app
	handle @app {
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

// startEdge runs the edge under its descriptor limit with a storage of
// its own, checks that the admin endpoint answering is this one's, and
// gives the attacker a dedicated IPv4 address.
func startEdge(dir string) *edge {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		fatal(err)
	}
	e := &edge{dir: dir, log: filepath.Join(dir, "caddy.log")}
	storage := filepath.Join(dir, "storage")
	cfg := filepath.Join(dir, "Caddyfile")
	os.WriteFile(cfg, fmt.Appendf(nil, edgeConfig, storage, *logLevel, serversOption()), 0o600)
	logf, err := os.Create(e.log)
	if err != nil {
		fatal(err)
	}
	// sh sets the limit (soft and hard: Go raises its soft limit to the
	// hard one at start) and execs Caddy, so the PID is Caddy's
	e.cmd = exec.Command("sh", "-c", `ulimit -n "$0" && exec "$@"`, strconv.Itoa(*edgeNofile), *caddyBin, "run", "--config", cfg)
	e.cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := e.cmd.Start(); err != nil {
		fatal(err)
	}
	logf.Close()
	e.exited = make(chan struct{})
	go func() { e.cmd.Wait(); close(e.exited) }()
	// the admin endpoint must be ours: its config names our storage
	for i := 0; ; i++ {
		select {
		case <-e.exited:
			fatal(fmt.Errorf("the edge exited at start; its log: %s\n%s", e.log, tail(e.log)))
		default:
		}
		resp, err := http.Get("http://" + adminAddr + "/config/storage/root")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(b), storage) {
				fatal(fmt.Errorf("the admin endpoint %s is another process's (its storage: %s); stop it first", adminAddr, b))
			}
			break
		}
		if i == 200 {
			fatal(fmt.Errorf("the edge's admin API: %v; its log: %s", err, e.log))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", e.cmd.Process.Pid)); !strings.Contains(string(b), "Max open files") ||
		!strings.Contains(string(b), strconv.Itoa(*edgeNofile)) {
		fatal(fmt.Errorf("the edge does not run under the descriptor limit %d", *edgeNofile))
	}
	resp, err := http.Post("http://"+adminAddr+"/fly/apps/attacker/ips", "application/json", strings.NewReader(`{"type":"v4"}`))
	if err != nil {
		fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var a struct{ Address string }
	if err := json.Unmarshal(b, &a); err != nil || a.Address == "" {
		fatal(fmt.Errorf("allocating the attacker an IPv4 address: %d %s", resp.StatusCode, b))
	}
	e.attackerV4 = a.Address
	return e
}

// serversOption is the servers global option for -read-header.
func serversOption() string {
	if *readHeader <= 0 {
		return ""
	}
	return fmt.Sprintf("\tservers fly/edge:80 {\n\t\ttimeouts {\n\t\t\tread_header %s\n\t\t}\n\t}\n", *readHeader)
}

func tail(file string) string {
	b, _ := os.ReadFile(file)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func (e *edge) stop() {
	e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.exited:
	case <-time.After(10 * time.Second):
		e.cmd.Process.Kill()
		<-e.exited
	}
}

// The edge's ports, each tried by one request that must be served.
type portCheck struct {
	name string
	try  func(e *edge, limit time.Duration) error
}

var portChecks = []portCheck{
	{"http", func(_ *edge, limit time.Duration) error { return victimGet(limit) }},
	{"https", func(_ *edge, limit time.Duration) error {
		c := &http.Client{Timeout: limit, Transport: &http.Transport{DisableKeepAlives: true,
			TLSClientConfig: &tls.Config{ServerName: "victim." + baseDomain, InsecureSkipVerify: true}}}
		req, _ := http.NewRequest(http.MethodGet, "https://"+sharedV4+":"+httpsPort+"/", nil)
		req.Host = "victim." + baseDomain
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}},
	{"tcp", func(e *edge, limit time.Duration) error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(e.attackerV4, passPort), limit)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(limit))
		c.Write([]byte("ping\n"))
		b := make([]byte, 5)
		_, err = io.ReadFull(c, b)
		return err
	}},
	{"udp", func(e *edge, limit time.Duration) error {
		c, err := net.Dial("udp4", net.JoinHostPort(e.attackerV4, udpPort))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(limit))
		c.Write([]byte("ping"))
		b := make([]byte, 64)
		_, err = c.Read(b)
		return err
	}},
}

// waitPorts waits until every port serves.
func (e *edge) waitPorts(limit time.Duration) error {
	start := time.Now()
	for _, p := range portChecks {
		for {
			err := p.try(e, 500*time.Millisecond)
			if err == nil {
				break
			}
			if time.Since(start) > limit {
				return fmt.Errorf("%s: %v", p.name, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

type portResult struct {
	name string
	took time.Duration // -1: not within settle
}

// portsAfter tries every port, each from ended until it serves (tries of
// 250 ms every 50 ms), up to settle.
func (e *edge) portsAfter(ended time.Time) []portResult {
	out := make([]portResult, len(portChecks))
	var wg sync.WaitGroup
	for i, p := range portChecks {
		wg.Go(func() {
			out[i] = portResult{p.name, -1}
			for time.Since(ended) < *settle {
				if p.try(e, 250*time.Millisecond) == nil {
					out[i].took = time.Since(ended)
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	return out
}

// machines plays the two apps' machines on loopback.
type machines struct {
	closers []io.Closer
	// the attacker's machine
	tcpOpen, tcpPeak atomic.Int64 // pass-through connections open, and their peak
	udpGot           atomic.Int64 // datagrams
	udpFlowsMu       sync.Mutex
	udpFlows         map[string]struct{} // the edge's source addresses seen (one per flow)
	holding, held    atomic.Int64        // POST bodies read and waiting, and their peak
	releaseMu        sync.Mutex
	release          chan struct{}
}

func startMachines() *machines {
	m := &machines{udpFlows: map[string]struct{}{}, release: make(chan struct{})}
	m.serveHTTP(net.JoinHostPort(victimIP, victimPort), http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "victim")
	}))
	m.serveHTTP(net.JoinHostPort(attackerIP, attackerWeb), http.HandlerFunc(m.hold))
	ln, err := net.Listen("tcp", net.JoinHostPort(attackerIP, attackerTCP))
	if err != nil {
		fatal(fmt.Errorf("attacker machine: %w", err))
	}
	m.closers = append(m.closers, ln)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() || errors.Is(err, syscall.EMFILE) {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				return
			}
			go func() { // echo
				defer c.Close()
				n := m.tcpOpen.Add(1)
				defer m.tcpOpen.Add(-1)
				for p := m.tcpPeak.Load(); n > p && !m.tcpPeak.CompareAndSwap(p, n); p = m.tcpPeak.Load() {
				}
				io.Copy(c, c)
			}()
		}
	}()
	ua, _ := net.ResolveUDPAddr("udp4", net.JoinHostPort(attackerIP, attackerTCP))
	uc, err := net.ListenUDP("udp4", ua)
	if err != nil {
		fatal(fmt.Errorf("attacker machine: %w", err))
	}
	m.closers = append(m.closers, uc)
	go func() {
		buf := make([]byte, 9000)
		for {
			n, src, err := uc.ReadFromUDP(buf)
			if err != nil {
				return
			}
			m.udpGot.Add(1)
			m.udpFlowsMu.Lock()
			m.udpFlows[src.String()] = struct{}{}
			m.udpFlowsMu.Unlock()
			uc.WriteToUDP(buf[:n], src)
		}
	}()
	return m
}

func (m *machines) serveHTTP(addr string, h http.Handler) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fatal(fmt.Errorf("machine %s: %w", addr, err))
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	m.closers = append(m.closers, srv)
}

// hold is the attacker's web machine: it reads a POST's whole body and
// holds its answer until released (the end of the attack).
func (m *machines) hold(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		io.WriteString(w, "attacker")
		return
	}
	io.Copy(io.Discard, r.Body)
	n := m.holding.Add(1)
	defer m.holding.Add(-1)
	for p := m.held.Load(); n > p && !m.held.CompareAndSwap(p, n); p = m.held.Load() {
	}
	m.releaseMu.Lock()
	rel := m.release
	m.releaseMu.Unlock()
	select {
	case <-rel:
	case <-r.Context().Done():
	}
	io.WriteString(w, "done")
}

func (m *machines) close() {
	for _, c := range m.closers {
		c.Close()
	}
}

// holdConns opens up to n connections to addr (8 dialers, each dial
// within 1 s) and holds them, sending nothing, until ctx is done; then
// closes them. It says how many it opened and how many the edge closed.
func holdConns(ctx context.Context, addr string, n int) string {
	var mu sync.Mutex
	var open []net.Conn
	var dialErrs atomic.Int64
	var firstDialErr atomic.Value
	var ct []time.Duration // how long each connection the edge closed lasted
	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for ctx.Err() == nil && next.Add(1) <= int64(n) {
				d := attackerDialer()
				c, err := d.DialContext(ctx, "tcp", addr)
				if err != nil {
					if ctx.Err() == nil {
						dialErrs.Add(1)
						firstDialErr.CompareAndSwap(nil, err.Error())
					}
					continue
				}
				mu.Lock()
				open = append(open, c)
				mu.Unlock()
				go func() {
					opened := time.Now()
					b := make([]byte, 1)
					if _, err := c.Read(b); err != nil && ctx.Err() == nil {
						mu.Lock()
						ct = append(ct, time.Since(opened))
						mu.Unlock()
					}
				}()
			}
		})
	}
	wg.Wait()
	dialed := time.Since(start)
	<-ctx.Done()
	mu.Lock()
	for _, c := range open {
		c.Close()
	}
	opened := len(open)
	ct = slices.Clone(ct)
	mu.Unlock()
	slices.Sort(ct)
	s := fmt.Sprintf("%d connections opened to %s (in %.1f s), %d dials failed, %d closed by the edge during the attack", opened, addr, dialed.Seconds(), dialErrs.Load(), len(ct))
	if len(ct) > 0 {
		s += fmt.Sprintf(" (after %.1f s median)", ct[len(ct)/2].Seconds())
	}
	if v := firstDialErr.Load(); v != nil {
		s += "; first dial error: " + v.(string)
	}
	return s
}

func attackIdle(ctx context.Context, e *edge, m *machines) string {
	m.tcpPeak.Store(m.tcpOpen.Load())
	s := holdConns(ctx, net.JoinHostPort(e.attackerV4, passPort), *conns)
	return s + fmt.Sprintf("; the attacker's machine held up to %d", m.tcpPeak.Load())
}

func attackNowhere(ctx context.Context, _ *edge, _ *machines) string {
	return holdConns(ctx, net.JoinHostPort(nowhereAddr, *nowPort), *conns)
}

// attackUDP sends one datagram from each source address/port pair
// (127.0.72.1.., ports udpSrcBase..+255) per round, a round a second at
// most: each pair is bound, sends and is closed, so no descriptor is held.
func attackUDP(ctx context.Context, e *edge, m *machines) string {
	dst := &net.UDPAddr{IP: net.ParseIP(e.attackerV4), Port: atoi(udpPort)}
	got0 := m.udpGot.Load()
	m.udpFlowsMu.Lock()
	clear(m.udpFlows)
	m.udpFlowsMu.Unlock()
	var sent, failed int64
	var firstErr string
	rounds := 0
	for ctx.Err() == nil {
		began := time.Now()
		for i := 0; i < *udpPairs && ctx.Err() == nil; i++ {
			src := &net.UDPAddr{IP: net.IPv4(127, 0, 72, byte(1+i/256)), Port: udpSrcBase + i%256}
			c, err := net.ListenUDP("udp4", src)
			if err == nil {
				_, err = c.WriteToUDP([]byte("abuse"), dst)
				c.Close()
			}
			if err != nil {
				failed++
				if firstErr == "" {
					firstErr = err.Error()
				}
				continue
			}
			sent++
		}
		rounds++
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(began.Add(time.Second))):
		}
	}
	m.udpFlowsMu.Lock()
	flows := len(m.udpFlows)
	m.udpFlowsMu.Unlock()
	s := fmt.Sprintf("%d pairs (127.0.72.1-%d, ports %d-%d), %d rounds: %d datagrams sent, %d failed; the attacker's machine got %d over %d flows",
		*udpPairs, (*udpPairs+255)/256, udpSrcBase, udpSrcBase+255, rounds, sent, failed, m.udpGot.Load()-got0, flows)
	if firstErr != "" {
		s += "; first error: " + firstErr
	}
	return s
}

// clientHello returns the bytes of a TLS ClientHello for the victim.
func clientHello() []byte {
	a, b := net.Pipe()
	go func() {
		tls.Client(a, &tls.Config{ServerName: "victim." + baseDomain, InsecureSkipVerify: true}).Handshake()
		a.Close()
	}()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(b, body); err != nil {
		fatal(err)
	}
	b.Close()
	return append(hdr, body...)
}

// attackSlowloris keeps -slow-conns connections to the shared address's
// TLS port, each sending a ClientHello for the victim one byte every
// -slow-every; a connection the edge closes is opened again.
func attackSlowloris(ctx context.Context, _ *edge, _ *machines) string {
	hello := clientHello()
	addr := net.JoinHostPort(sharedV4, httpsPort)
	var opened, dialErrs atomic.Int64
	var mu sync.Mutex
	var ct []time.Duration // how long each connection the edge closed lasted
	var wg sync.WaitGroup
	for range *slowConns {
		wg.Go(func() {
			for ctx.Err() == nil {
				d := attackerDialer()
				c, err := d.DialContext(ctx, "tcp", addr)
				if err != nil {
					if ctx.Err() == nil {
						dialErrs.Add(1)
						time.Sleep(100 * time.Millisecond)
					}
					continue
				}
				opened.Add(1)
				began := time.Now()
				gone := make(chan struct{})
				go func() {
					b := make([]byte, 1)
					c.Read(b)
					close(gone)
				}()
			send:
				for i := 0; i < len(hello); i++ {
					if _, err := c.Write(hello[i : i+1]); err != nil {
						break
					}
					select {
					case <-ctx.Done():
						break send
					case <-gone:
						mu.Lock()
						ct = append(ct, time.Since(began))
						mu.Unlock()
						break send
					case <-time.After(*slowEvery):
					}
				}
				c.Close()
			}
		})
	}
	wg.Wait()
	slices.Sort(ct)
	s := fmt.Sprintf("%d connections at a time to %s, a %d-byte ClientHello one byte every %s: %d opened, %d dials failed, %d closed by the edge during the attack",
		*slowConns, addr, len(hello), *slowEvery, opened.Load(), dialErrs.Load(), len(ct))
	if len(ct) > 0 {
		s += fmt.Sprintf(" (after %.1f s median)", ct[len(ct)/2].Seconds())
	}
	return s
}

// attackTOML deploys, one after the other, a fly.toml with -checks
// http_checks to a new app of the tenant.
func attackTOML(ctx context.Context, _ *edge, _ *machines) string {
	var doc bytes.Buffer
	doc.WriteString("app = 'hostile'\n[[services]]\ninternal_port = 8080\n[[services.ports]]\nport = 443\nhandlers = ['tls', 'http']\n")
	for i := range *checks {
		fmt.Fprintf(&doc, "[[services.http_checks]]\ninterval = '10s'\ntimeout = '2s'\npath = '/health/%d'\n", i)
	}
	statuses := map[string]int{}
	var lat []time.Duration
	var firstBody string
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+adminAddr+"/fly/apps/hostile", bytes.NewReader(doc.Bytes()))
		req.Header.Set("Content-Type", "application/toml")
		t0 := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				statuses[err.Error()]++
			}
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		lat = append(lat, time.Since(t0))
		statuses[strconv.Itoa(resp.StatusCode)]++
		if firstBody == "" {
			firstBody = strings.TrimSpace(string(b))
			if len(firstBody) > 160 {
				firstBody = firstBody[:160] + "…"
			}
		}
	}
	slices.Sort(lat)
	var st []string
	for k, v := range statuses {
		st = append(st, fmt.Sprintf("%s x%d", k, v))
	}
	slices.Sort(st)
	s := fmt.Sprintf("fly.toml of %d checks (%d KB), %d deploys in turn: %s", *checks, doc.Len()>>10, len(lat), strings.Join(st, ", "))
	if len(lat) > 0 {
		s += fmt.Sprintf("; p50 %.1f ms, max %.1f ms; first answer: %s", ms(lat[len(lat)/2]), ms(lat[len(lat)-1]), firstBody)
	}
	return s
}

// attackPosts sends -posts concurrent POSTs of 1 MiB to the attacker's
// app; its machine reads each body and holds the answer until the end of
// the attack, while the edge keeps each body for a fly-replay.
func attackPosts(ctx context.Context, _ *edge, m *machines) string {
	m.releaseMu.Lock()
	m.release = make(chan struct{})
	rel := m.release
	m.releaseMu.Unlock()
	m.held.Store(0)
	body := bytes.Repeat([]byte("x"), 1<<20)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: attackerDialer().DialContext}}
	var answered, failed atomic.Int64
	var firstErr atomic.Value
	rctx, rcancel := context.WithCancel(context.Background())
	defer rcancel()
	var wg sync.WaitGroup
	for range *posts {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(rctx, http.MethodPost, "http://"+sharedV4+":"+httpPort+"/hold", bytes.NewReader(body))
			req.Host = "attacker." + baseDomain
			resp, err := client.Do(req)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				answered.Add(1)
			} else {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, resp.Status)
			}
		})
	}
	<-ctx.Done()
	close(rel) // the machine answers them all
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		rcancel()
		<-done
	}
	s := fmt.Sprintf("%d POSTs of 1 MiB: the machine held up to %d bodies read; %d answered 200 once released, %d failed", *posts, m.held.Load(), answered.Load(), failed.Load())
	if v := firstErr.Load(); v != nil {
		s += "; first failure: " + v.(string)
	}
	return s
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "abuse:", err)
	os.Exit(1)
}
