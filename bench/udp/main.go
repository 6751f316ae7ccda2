// Command udp measures UDP round trips through flyedge beside a direct
// path and nginx's stream udp proxy, in one run on loopback: an echo
// machine, and flows that each send a datagram and wait for its echo.
// See bench/README.md.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
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

const (
	machineAddr = "127.0.65.1:7070"
	edgeUDPPort = "9053"
	nginxAddr   = "127.0.65.9:9054"
	adminAddr   = "127.0.0.1:2399"
)

func main() {
	caddyBin := flag.String("caddy", "", "the flyedge Caddy binary")
	flows := flag.Int("flows", 32, "concurrent flows")
	duration := flag.Duration("duration", 5*time.Second, "length of one measurement")
	reps := flag.Int("reps", 3, "measurements per path, interleaved")
	size := flag.Int("size", 64, "datagram size in bytes")
	flag.Parse()
	tmp, err := os.MkdirTemp("", "flyedge-udp-bench-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)

	stopEcho := echo(machineAddr)
	defer stopEcho()

	edge, edgeAddr := startEdge(*caddyBin, tmp)
	defer stop(edge)
	paths := []path{{"direct", machineAddr, 0}, {"flyedge", edgeAddr, edge.Process.Pid}}
	if ng := startNginx(tmp); ng != nil {
		defer stop(ng)
		paths = append(paths, path{"nginx", nginxAddr, ng.Process.Pid})
	} else {
		log.Print("nginx with the stream module not found: its row is left out (apt-get install nginx-light libnginx-mod-stream)")
	}
	for _, p := range paths { // warm up, and check each path answers
		if r := measure(p, 2, 300*time.Millisecond, *size); r.trips == 0 {
			log.Fatalf("%s (%s) does not answer", p.name, p.addr)
		}
	}
	results := map[string][]result{}
	for range *reps {
		for _, p := range paths {
			results[p.name] = append(results[p.name], measure(p, *flows, *duration, *size))
		}
	}
	fmt.Printf("%d flows, %d-byte datagrams, %d x %s per path, interleaved\n", *flows, *size, *reps, *duration)
	fmt.Printf("%-8s %12s %9s %9s %8s %10s\n", "path", "trips/s", "p50_us", "p99_us", "loss_%", "cpu_us/trip")
	for _, p := range paths {
		rs := results[p.name]
		slices.SortFunc(rs, func(a, b result) int { return int(a.rate() - b.rate()) })
		m := rs[len(rs)/2] // median by rate
		cpu := "-"
		if m.cpu > 0 {
			cpu = fmt.Sprintf("%.1f", float64(m.cpu.Microseconds())/float64(m.trips))
		}
		fmt.Printf("%-8s %12.0f %9d %9d %8.3f %10s\n", p.name, m.rate(), m.p50.Microseconds(), m.p99.Microseconds(), 100*float64(m.lost)/float64(m.trips+m.lost), cpu)
	}
}

type path struct {
	name string
	addr string
	pid  int // the proxy's process, for its CPU time
}

type result struct {
	trips, lost int64
	elapsed     time.Duration
	p50, p99    time.Duration
	cpu         time.Duration
}

func (r result) rate() float64 { return float64(r.trips) / r.elapsed.Seconds() }

// measure runs flows flows against p for d: each sends a datagram and
// waits up to 200ms for its echo (else counts it lost), then the next.
func measure(p path, flows int, d time.Duration, size int) result {
	var trips, lost atomic.Int64
	lat := make([][]time.Duration, flows)
	cpu0 := cpuTime(p.pid)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for f := range flows {
		wg.Go(func() {
			conn, err := net.Dial("udp4", p.addr)
			if err != nil {
				log.Fatal(err)
			}
			defer conn.Close()
			out := bytes.Repeat([]byte{'x'}, size)
			in := make([]byte, size+64)
			for seq := 0; time.Now().Before(deadline); seq++ {
				copy(out, strconv.Itoa(seq)+" ")
				t0 := time.Now()
				if _, err := conn.Write(out); err != nil {
					lost.Add(1)
					continue
				}
				conn.SetReadDeadline(t0.Add(200 * time.Millisecond))
				for {
					n, err := conn.Read(in)
					if err != nil {
						lost.Add(1)
						break
					}
					if bytes.Equal(in[:n], out) { // an echo of an earlier, lost-then-late datagram does not count
						lat[f] = append(lat[f], time.Since(t0))
						trips.Add(1)
						break
					}
				}
			}
		})
	}
	wg.Wait()
	r := result{trips: trips.Load(), lost: lost.Load(), elapsed: time.Since(start)}
	if p.pid > 0 {
		r.cpu = cpuTime(p.pid) - cpu0
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) > 0 {
		r.p50, r.p99 = all[len(all)/2], all[len(all)*99/100]
	}
	return r
}

// cpuTime returns the user+system CPU time of process pid so far.
func cpuTime(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	return time.Duration(ut+st) * time.Second / 100 // clock ticks (USER_HZ 100)
}

// echo serves the machine: it sends every datagram back.
func echo(addr string) func() {
	ua, _ := net.ResolveUDPAddr("udp4", addr)
	conn, err := net.ListenUDP("udp4", ua)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		buf := make([]byte, 9000)
		for {
			n, src, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			conn.WriteToUDP(buf[:n], src)
		}
	}()
	return func() { conn.Close() }
}

const edgeConfig = `{
	admin ` + adminAddr + `
	persist_config off
	storage file_system %s
	log {
		level ERROR
	}
	fly {
		region iad
		app game {
			service 7070 udp {
				port ` + edgeUDPPort + `
			}
			machine 0000000000b001 iad 127.0.65.1
		}
	}
	fly_ips {
		v4 127.31.0.0/24
		auto_allocate off
	}
	fly_edge {
		udp_ports ` + edgeUDPPort + `
	}
}
`

// startEdge runs flyedge with app game's udp service, gives the app a
// dedicated IPv4 address, and returns the process and the address.
func startEdge(bin, tmp string) (*exec.Cmd, string) {
	cfg := filepath.Join(tmp, "Caddyfile")
	os.WriteFile(cfg, fmt.Appendf(nil, edgeConfig, filepath.Join(tmp, "storage")), 0o600)
	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.Env = append(os.Environ(), "HOME="+tmp)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	var resp *http.Response
	var err error
	for range 100 {
		resp, err = http.Post("http://"+adminAddr+"/fly/apps/game/ips", "application/json", strings.NewReader(`{"type":"v4"}`))
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		log.Fatalf("flyedge's admin API: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var a struct{ Address string }
	if err := json.Unmarshal(body, &a); err != nil || a.Address == "" {
		log.Fatalf("allocating an IPv4 address: %d %s", resp.StatusCode, body)
	}
	return cmd, net.JoinHostPort(a.Address, edgeUDPPort)
}

// startNginx runs nginx's stream udp proxy in front of the machine, one
// worker in the foreground, or returns nil without nginx's stream module.
func startNginx(tmp string) *exec.Cmd {
	bin, err := exec.LookPath("nginx")
	mod := "/usr/lib/nginx/modules/ngx_stream_module.so"
	if err != nil {
		return nil
	}
	if _, err := os.Stat(mod); err != nil {
		return nil
	}
	conf := filepath.Join(tmp, "nginx.conf")
	os.WriteFile(conf, fmt.Appendf(nil, `load_module %s;
daemon off;
master_process off;
worker_processes 1;
pid %s/nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
stream {
	server {
		listen %s udp;
		proxy_pass %s;
		proxy_timeout 30s;
	}
}
`, mod, tmp, nginxAddr, machineAddr), 0o600)
	cmd := exec.Command(bin, "-c", conf, "-p", tmp)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	return cmd
}

func stop(cmd *exec.Cmd) {
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}
