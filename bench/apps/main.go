// Command apps measures flyedge with many apps: the start time and
// resident memory of an edge with N apps (each one service with http on
// Fly's 80 and tls+http on 443, two machines) defined in the config or
// created through the admin API, the latency of app creates, updates and
// deletes through the admin API while other apps serve requests (which
// must all succeed), and, for comparison, the same change as a Caddy
// config load. Run it through bench/apps.sh.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
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

var (
	caddyBin = flag.String("caddy", "", "the Caddy with flyedge to measure")
	sizes    = flag.String("apps", "1000,10000,100000", "numbers of apps")
	modes    = flag.String("modes", "config,api", "where the apps are defined: config, api")
	changes  = flag.Int("changes", 1000, "app changes to time at each size")
	workers  = flag.Int("workers", 32, "concurrent admin API calls while registering")
	reload   = flag.Bool("reload", true, "also time one app added by a config load (config mode)")
)

const backendPort = "9001"

func main() {
	flag.Parse()
	if *caddyBin == "" {
		fatal(errors.New("-caddy is needed"))
	}
	stop := startBackends()
	defer stop()
	fmt.Printf("| mode | apps | start s | RSS MiB | peak RSS MiB | change p50 ms | p99 ms | max ms | requests to other apps | errors | config load + 1 app s | RSS after MiB |\n")
	fmt.Printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, mode := range strings.Split(*modes, ",") {
		for _, s := range strings.Split(*sizes, ",") {
			n, err := strconv.Atoi(s)
			if err != nil {
				fatal(err)
			}
			r, err := run(mode, n)
			if err != nil {
				fatal(fmt.Errorf("%s, %d apps: %w", mode, n, err))
			}
			fmt.Printf("| %s | %d | %.2f | %d | %d | %.1f | %.1f | %.1f | %d | %d | %s | %s |\n", mode, n, r.start.Seconds(), r.rss>>20, r.peak>>20,
				ms(r.p50), ms(r.p99), ms(r.max), r.requests, r.errors, r.reloadCell(), r.reloadRSSCell())
		}
	}
}

type result struct {
	start            time.Duration
	rss, peak        int64
	p50, p99, max    time.Duration
	requests, errors int64
	reloadT          time.Duration
	reloadRSS        int64
	registered       time.Duration
}

func (r result) reloadCell() string {
	if r.reloadT == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", r.reloadT.Seconds())
}

func (r result) reloadRSSCell() string {
	if r.reloadRSS == 0 {
		return "-"
	}
	return strconv.FormatInt(r.reloadRSS>>20, 10)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// edge is one Caddy under measurement.
type edge struct {
	dir, admin, httpPort, httpsPort string
	cmd                             *exec.Cmd
	exited                          chan struct{}
	client                          *http.Client
}

func newEdge() (*edge, error) {
	dir, err := os.MkdirTemp("", "flyedge-bench-apps-")
	if err != nil {
		return nil, err
	}
	return &edge{dir: dir, admin: freeAddr(), httpPort: freePort(), httpsPort: freePort(),
		client: &http.Client{Timeout: 5 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 256}}}, nil
}

// appJSON is the definition of an app with internal port port: http on
// the edge's web port (Fly's 80), tls and http on its TLS port (443).
func (e *edge) appJSON(port int) string {
	return fmt.Sprintf(`{"services":[{"internal_port":%d,"ports":[{"port":%s,"handlers":["http"]},{"port":%s,"handlers":["tls","http"]}]}]}`, port, e.httpPort, e.httpsPort)
}

func machineJSON(i, k int) string {
	return fmt.Sprintf(`{"id":"%014x","region":"iad","address":"127.0.0.%d"}`, uint64(i)<<4|uint64(k), k+1)
}

// config writes the edge's config with apps 0..n-1 in it.
func (e *edge) config(n int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"admin":{"listen":%q,"config":{"persist":false}},"storage":{"module":"file_system","root":%q},"logging":{"logs":{"default":{"level":"WARN"}}},"apps":{`, e.admin, filepath.Join(e.dir, "storage"))
	fmt.Fprintf(&b, `"fly":{"base_domain":"bench.localhost","apps":{`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		def := strings.TrimSuffix(e.appJSON(9001), "}")
		fmt.Fprintf(&b, `"app%d":%s,"machines":[%s,%s]}`, i, def, machineJSON(i, 0), machineJSON(i, 1))
	}
	fmt.Fprintf(&b, `}},"fly_ips":{"http_port":%s,"https_port":%s},"fly_edge":{"ports":[%q,%q],"issuers":[{"module":"internal"}]},`, e.httpPort, e.httpsPort, e.httpPort, e.httpsPort)
	fmt.Fprintf(&b, `"http":{"servers":{"edge":{"listen":["fly/edge:80"],"read_header_timeout":"10s","routes":[{"match":[{"fly_app":{}}],"handle":[{"handler":"fly_headers"},{"handler":"reverse_proxy","dynamic_upstreams":{"source":"fly"},"load_balancing":{"selection_policy":{"policy":"fly"}},"transport":{"protocol":"fly"}}],"terminal":true},{"handle":[{"handler":"static_response","abort":true}]}]}}}`)
	b.WriteString(`}}`)
	return b.Bytes()
}

// startCaddy runs Caddy on cfg and returns once app probe answers.
func (e *edge) startCaddy(cfg []byte, probe string) (time.Duration, error) {
	file := filepath.Join(e.dir, "caddy.json")
	if err := os.WriteFile(file, cfg, 0o600); err != nil {
		return 0, err
	}
	began := time.Now()
	e.cmd = exec.Command(*caddyBin, "run", "--config", file)
	e.cmd.Env = append(os.Environ(), "HOME="+e.dir, "XDG_DATA_HOME="+filepath.Join(e.dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(e.dir, "config"))
	log, _ := os.Create(filepath.Join(e.dir, "caddy.log"))
	e.cmd.Stdout, e.cmd.Stderr = log, log
	e.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := e.cmd.Start(); err != nil {
		return 0, err
	}
	exited := make(chan struct{})
	go func() { e.cmd.Wait(); close(exited) }()
	e.exited = exited
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-exited:
			return 0, fmt.Errorf("caddy exited; see %s", filepath.Join(e.dir, "caddy.log"))
		default:
		}
		if probe == "" {
			if resp, err := http.Get("http://" + e.admin + "/config/"); err == nil {
				resp.Body.Close()
				return time.Since(began), nil
			}
			continue
		}
		if status, err := e.request(probe); err == nil && status == http.StatusOK {
			return time.Since(began), nil
		}
	}
	return 0, fmt.Errorf("caddy did not serve %s within 5 minutes; see %s", probe, filepath.Join(e.dir, "caddy.log"))
}

func (e *edge) stop() {
	if e.cmd != nil && e.cmd.Process != nil {
		e.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.exited:
		case <-time.After(30 * time.Second):
			e.cmd.Process.Kill()
			<-e.exited
		}
		e.cmd = nil
	}
}

// request sends GET / for app through the edge's HTTP port.
func (e *edge) request(app string) (int, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://127.0.0.1:"+e.httpPort+"/", nil)
	req.Host = app + ".bench.localhost"
	resp, err := reqClient.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

var reqClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

func (e *edge) call(method, path, body string) error {
	req, _ := http.NewRequest(method, "http://"+e.admin+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return nil
}

// memory returns the process's resident and peak resident bytes.
func memory(pid int) (rss, peak int64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			peak = kb << 10
		}
	}
	return rss, peak
}

func run(mode string, n int) (r result, err error) {
	e, err := newEdge()
	if err != nil {
		return r, err
	}
	defer func() {
		e.stop()
		if err == nil {
			os.RemoveAll(e.dir)
		}
	}()
	last := fmt.Sprintf("app%d", n-1)
	switch mode {
	case "config":
		// a first start makes the storage and the internal CA, as the
		// api mode's first start does
		if _, err = e.startCaddy(e.config(0), ""); err != nil {
			return r, err
		}
		e.stop()
		if r.start, err = e.startCaddy(e.config(n), last); err != nil {
			return r, err
		}
	case "api":
		if _, err = e.startCaddy(e.config(0), ""); err != nil {
			return r, err
		}
		began := time.Now()
		if err := e.register(n); err != nil {
			return r, err
		}
		r.registered = time.Since(began)
		fmt.Fprintf(os.Stderr, "%d apps and %d machines registered through the admin API in %v\n", n, 2*n, r.registered.Round(time.Millisecond))
		e.stop()
		if r.start, err = e.startCaddy(e.config(0), last); err != nil {
			return r, err
		}
	default:
		return r, fmt.Errorf("unknown mode %q", mode)
	}
	r.rss, r.peak = memory(e.cmd.Process.Pid)

	// changes through the API while other apps serve
	ctx, cancel := context.WithCancel(context.Background())
	var requests, failures atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				app := fmt.Sprintf("app%d", rand.IntN(n))
				status, err := e.request(app)
				requests.Add(1)
				if err != nil || status != http.StatusOK {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %d %v", app, status, err))
				}
			}
		})
	}
	lat := make([]time.Duration, 0, *changes)
	for i := range *changes {
		name := fmt.Sprintf("new%d", i/3)
		var method, body string
		switch i % 3 {
		case 0:
			method, body = http.MethodPut, e.appJSON(9001)
		case 1:
			method, body = http.MethodPut, e.appJSON(9002)
		case 2:
			method = http.MethodDelete
		}
		began := time.Now()
		if err := e.call(method, "/fly/apps/"+name, body); err != nil {
			cancel()
			wg.Wait()
			return r, err
		}
		lat = append(lat, time.Since(began))
		// in effect on the 2xx: the edge answers for the new app (no
		// machine yet: 503), and closes the connection once it is gone
		status, _ := e.request(name)
		if i%3 != 2 && status != http.StatusServiceUnavailable || i%3 == 2 && status != 0 {
			cancel()
			wg.Wait()
			return r, fmt.Errorf("change %d (%s %s) not in effect on its 2xx: the app answers %d", i, method, name, status)
		}
	}
	cancel()
	wg.Wait()
	slices.Sort(lat)
	r.p50, r.p99, r.max = lat[len(lat)/2], lat[len(lat)*99/100], lat[len(lat)-1]
	r.requests, r.errors = requests.Load(), failures.Load()
	if v := firstErr.Load(); v != nil {
		fmt.Fprintf(os.Stderr, "first failed request: %s\n", v)
	}

	// the same change as a config load
	if mode == "config" && *reload {
		cfg := e.config(n + 1)
		began := time.Now()
		resp, err := e.client.Post("http://"+e.admin+"/load", "application/json", bytes.NewReader(cfg))
		if err != nil {
			return r, err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return r, fmt.Errorf("config load: %d %s", resp.StatusCode, b)
		}
		r.reloadT = time.Since(began)
		r.reloadRSS, _ = memory(e.cmd.Process.Pid)
	}
	return r, nil
}

// register creates apps 0..n-1 and their machines through the admin API.
func (e *edge) register(n int) error {
	jobs := make(chan int)
	errs := make(chan error, *workers)
	var wg sync.WaitGroup
	for range *workers {
		wg.Go(func() {
			for i := range jobs {
				app := fmt.Sprintf("/fly/apps/app%d", i)
				err := e.call(http.MethodPut, app, e.appJSON(9001))
				for k := 0; k < 2 && err == nil; k++ {
					err = e.call(http.MethodPost, app+"/machines", machineJSON(i, k))
				}
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		})
	}
	for i := range n {
		select {
		case jobs <- i:
		case err := <-errs:
			close(jobs)
			wg.Wait()
			return err
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// startBackends serves the machines: 127.0.0.1 and 127.0.0.2 on 9001
// and 9002, answering ok.
func startBackends() func() {
	var servers []*http.Server
	for _, addr := range []string{"127.0.0.1", "127.0.0.2"} {
		for _, port := range []string{backendPort, "9002"} {
			ln, err := net.Listen("tcp", net.JoinHostPort(addr, port))
			if err != nil {
				fatal(fmt.Errorf("backend: %w", err))
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })}
			go srv.Serve(ln)
			servers = append(servers, srv)
		}
	}
	return func() {
		for _, s := range servers {
			s.Close()
		}
	}
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func freePort() string {
	_, port, _ := net.SplitHostPort(freeAddr())
	return port
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "apps:", err)
	os.Exit(1)
}
