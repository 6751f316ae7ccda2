// Command propagation measures how soon edges sharing a storage see
// each other's changes: 3 Caddy processes on one storage (a shared
// folder, or PostgreSQL with caddy.storage.postgres), 1,000 machine
// registrations made in turn on each edge, and for each the time until
// the two other edges answer for the new machine. Run it through
// bench/propagation.sh.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

var (
	caddyBin = flag.String("caddy", "", "the Caddy with flyedge to measure")
	changes  = flag.Int("changes", 1000, "machine registrations")
	storages = flag.String("storages", "file,postgres", "file, postgres")
	pgAddr   = flag.String("pg", "127.0.0.1:5432", "PostgreSQL (user postgres, trust authentication)")
)

func main() {
	flag.Parse()
	if *caddyBin == "" {
		fatal(fmt.Errorf("-caddy is needed"))
	}
	fmt.Println("| storage | changes | seen by the 2 other edges: p50 | p99 | max |")
	fmt.Println("|---|---|---:|---:|---:|")
	for _, kind := range strings.Split(*storages, ",") {
		lat, err := run(kind)
		if err != nil {
			fatal(fmt.Errorf("%s: %w", kind, err))
		}
		slices.Sort(lat)
		fmt.Printf("| %s | %d | %.1f ms | %.1f ms | %.1f ms |\n", kind, *changes, ms(lat[len(lat)/2]), ms(lat[len(lat)*99/100]), ms(lat[len(lat)-1]))
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func run(kind string) ([]time.Duration, error) {
	dir, err := os.MkdirTemp("", "flyedge-bench-propagation-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	var storage string
	switch kind {
	case "file":
		storage = fmt.Sprintf(`{"module":"file_system","root":%q}`, filepath.Join(dir, "storage"))
	case "postgres":
		dsn, drop, err := database()
		if err != nil {
			return nil, err
		}
		defer drop()
		storage = fmt.Sprintf(`{"module":"postgres","dsn":%q}`, dsn)
	default:
		return nil, fmt.Errorf("unknown storage %q", kind)
	}
	var admins []string
	for i := range 3 {
		admin := freeAddr()
		cfg := fmt.Sprintf(`{"admin":{"listen":%q,"config":{"persist":false}},"storage":%s,"logging":{"logs":{"default":{"level":"WARN"}}},
			"apps":{"fly":{"base_domain":"bench.localhost","apps":{"app0":{},"app1":{},"app2":{},"app3":{},"app4":{}}},"fly_ips":{}}}`, admin, storage)
		file := filepath.Join(dir, fmt.Sprintf("edge%d.json", i))
		os.WriteFile(file, []byte(cfg), 0o600)
		cmd := exec.Command(*caddyBin, "run", "--config", file)
		cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, fmt.Sprint("data", i)), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
		log, _ := os.Create(filepath.Join(dir, fmt.Sprintf("edge%d.log", i)))
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		defer func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		}()
		admins = append(admins, admin)
	}
	for _, a := range admins {
		if err := waitAdmin(a); err != nil {
			return nil, err
		}
	}
	var lat []time.Duration
	for i := range *changes {
		on := i % 3
		app, id := fmt.Sprintf("app%d", i%5), fmt.Sprintf("%014x", 0xb0000+i)
		if err := call(http.MethodPut, admins[on], "/fly/apps/"+app+"/machines/"+id, `{"region":"iad","address":"10.0.0.1"}`); err != nil {
			return nil, err
		}
		began := time.Now()
		for k := 1; k <= 2; k++ {
			other := admins[(on+k)%3]
			for call(http.MethodGet, other, "/fly/apps/"+app+"/machines/"+id, "") != nil {
				if time.Since(began) > 30*time.Second {
					return nil, fmt.Errorf("change %d not seen on another edge after 30 s", i)
				}
				time.Sleep(200 * time.Microsecond)
			}
			lat = append(lat, time.Since(began))
		}
	}
	return lat, nil
}

var client = &http.Client{Timeout: 30 * time.Second}

func call(method, admin, path, body string) error {
	req, _ := http.NewRequest(method, "http://"+admin+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
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

func waitAdmin(admin string) error {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if call(http.MethodGet, admin, "/fly/apps", "") == nil {
			return nil
		}
	}
	return fmt.Errorf("no admin endpoint at %s", admin)
}

// database creates a database for the run and returns its DSN and a
// function that drops it.
func database() (string, func(), error) {
	var b [6]byte
	rand.Read(b[:])
	name := "flyedge_bench_" + hex.EncodeToString(b[:])
	ctx := context.Background()
	admin := "postgres://postgres@" + *pgAddr + "/postgres?sslmode=disable"
	c, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "", nil, err
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", nil, err
	}
	return "postgres://postgres@" + *pgAddr + "/" + name + "?sslmode=disable", func() {
		if c, err := pgx.Connect(ctx, admin); err == nil {
			c.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)")
			c.Close(ctx)
		}
	}, nil
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "propagation:", err)
	os.Exit(1)
}
