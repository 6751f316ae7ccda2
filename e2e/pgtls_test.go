package e2e

import (
	"context"
	"crypto/md5"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
)

// pgEdge is a loaded edge with the app "pg" (machine: the local
// PostgreSQL server) on a pg_tls port, and "pgdown" whose machine is down.
type pgEdge struct {
	port, downPort, plainPort, upTLSPort string
	rootFile                             string
}

func startPGEdge(t *testing.T) *pgEdge {
	t.Helper()
	requirePostgres(t)
	e := &pgEdge{port: freePort(), downPort: freePort(), plainPort: freePort(), upTLSPort: freePort()}
	dead := freePort()
	cfg := fmt.Sprintf(`{
	"admin": {"listen": %q, "config": {"persist": false}},
	"apps": {
		"fly": {"base_domain": "edge.test", "apps": {
			"pg": {
				"services": [{"internal_port": 5432, "ports": [{"port": %[2]s, "handlers": ["pg_tls"]}, {"port": %[4]s, "handlers": ["pg_tls"]}, {"port": %[6]s, "handlers": ["pg_tls"]}]}],
				"machines": [{"id": "00000000000d01", "region": "iad", "address": "127.0.0.1"}]
			},
			"pgdown": {
				"services": [{"internal_port": %[5]s, "ports": [{"port": %[3]s, "handlers": ["pg_tls"]}, {"port": %[2]s, "handlers": ["pg_tls"]}]}],
				"machines": [{"id": "00000000000d02", "region": "iad", "address": "127.0.0.1"}]
			}
		}},
		"tls": {"certificates": {"automate": ["pg.edge.test", "pgdown.edge.test"]}, "automation": {"policies": [{"issuers": [{"module": "internal"}]}]}},
		"pki": {"certificate_authorities": {"local": {"install_trust": false}}},
		"layer4": {"servers": {
			"pg": {"listen": [":%[2]s", ":%[3]s"], "routes": [{"handle": [
				{"handler": "pg_tls", "connection_policies": [{"default_sni": "pg.edge.test"}]},
				{"handler": "fly_proxy"}
			]}]},
			"pgplain": {"listen": [":%[4]s"], "routes": [{"handle": [
				{"handler": "pg_tls", "allow_plaintext": true, "handshake_timeout": "500ms"},
				{"handler": "fly_proxy"}
			]}]},
			"pgup": {"listen": [":%[6]s"], "routes": [{"handle": [
				{"handler": "pg_tls", "connection_policies": [{"default_sni": "pg.edge.test"}], "upstream_tls": {"insecure_skip_verify": true}},
				{"handler": "fly_proxy"}
			]}]}
		}}
	}
}`, adminAddr, e.port, e.downPort, e.plainPort, dead, e.upTLSPort)
	if err := load(t, cfg, "json"); err != nil {
		t.Fatal(err)
	}
	caddyRoots(t, caddyHome)
	e.rootFile = filepath.Join(caddyHome, "data", "caddy", "pki", "authorities", "local", "root.crt")
	// wait for the certificate

	waitFor(t, "the certificate of pg.edge.test", func() bool {
		c, err := e.connect(context.Background(), "sslmode=verify-full", e.port)
		if err == nil {
			c.Close(context.Background())
		}

		return err == nil
	})
	return e
}

// connect opens a pgx connection to the edge as host pg.edge.test.
func (e *pgEdge) connect(ctx context.Context, opts, port string) (*pgx.Conn, error) {
	return e.connectHost(ctx, "pg.edge.test", opts, port)
}

// connectHost opens a pgx connection to the edge as host.
func (e *pgEdge) connectHost(ctx context.Context, host, opts, port string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=postgres dbname=test sslrootcert=%s connect_timeout=5 %s", host, port, e.rootFile, opts))
	if err != nil {
		return nil, err
	}
	cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil }
	// on a cancelled context, send a CancelRequest (as psql's Ctrl-C does)
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 5 * time.Second}
	}
	return pgx.ConnectConfig(ctx, cfg)
}

func TestPGTLS(t *testing.T) {
	e := startPGEdge(t)
	ctx := context.Background()

	for _, opts := range []string{"sslmode=require", "sslmode=verify-full", "sslmode=require sslnegotiation=direct", "sslmode=verify-full sslnegotiation=direct"} {
		t.Run(opts, func(t *testing.T) {
			c, err := e.connect(ctx, opts, e.port)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx)
			var ssl bool
			var n int
			if err := c.QueryRow(ctx, "select ssl, 41 + 1 from pg_stat_ssl where pid = pg_backend_pid()").Scan(&ssl, &n); err != nil {
				t.Fatal(err)
			}
			if ssl || n != 42 {
				t.Fatalf("the machine should see a plaintext session (ssl=%v), n=%d", ssl, n)
			}
			if !c.PgConn().Conn().(interface{ ConnectionState() tls.ConnectionState }).ConnectionState().HandshakeComplete {
				t.Fatal("the client is not on TLS")
			}
		})
	}

	t.Run("TLS to the machine too", func(t *testing.T) {
		c, err := e.connect(ctx, "sslmode=verify-full", e.upTLSPort)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		var ssl bool
		if err := c.QueryRow(ctx, "select ssl from pg_stat_ssl where pid = pg_backend_pid()").Scan(&ssl); err != nil || !ssl {
			t.Fatalf("the machine should see a TLS session with upstream_tls: ssl=%v %v", ssl, err)
		}
	})
	t.Run("plaintext is refused", func(t *testing.T) {
		_, err := e.connect(ctx, "sslmode=disable", e.port)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "28000" || !strings.Contains(pe.Message, "TLS is required") {
			t.Fatalf("error %v, want FATAL 28000 TLS is required", err)
		}
	})
	t.Run("plaintext allowed where configured", func(t *testing.T) {
		c, err := e.connect(ctx, "sslmode=disable", e.plainPort)
		if err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
	})
	t.Run("direct TLS without ALPN postgresql is refused", func(t *testing.T) {
		c, err := tls.Dial("tcp", "127.0.0.1:"+e.port, &tls.Config{ServerName: "pg.edge.test", InsecureSkipVerify: true})
		if err == nil {
			c.Close()
			t.Fatal("a direct TLS handshake without ALPN was accepted")
		}
	})
	t.Run("GSSENCRequest then SSLRequest", func(t *testing.T) {
		raw, err := net.Dial("tcp", "127.0.0.1:"+e.port)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(5 * time.Second))
		raw.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30})
		var b [1]byte
		if _, err := io.ReadFull(raw, b[:]); err != nil || b[0] != 'N' {
			t.Fatalf("GSSENCRequest: %q %v, want N", b, err)
		}
		raw.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
		if _, err := io.ReadFull(raw, b[:]); err != nil || b[0] != 'S' {
			t.Fatalf("SSLRequest after GSSENCRequest: %q %v, want S", b, err)
		}
	})
	t.Run("apps sharing a port are told apart by SNI", func(t *testing.T) {
		_, err := e.connectHost(ctx, "pgdown.edge.test", "sslmode=verify-full", e.port)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "57P03" || !strings.Contains(pe.Message, `"pgdown"`) {
			t.Fatalf("SNI pgdown.edge.test on the shared port: %v, want pgdown's 57P03", err)
		}
		c, err := e.connectHost(ctx, "pg.edge.test", "sslmode=verify-full", e.port)
		if err != nil {
			t.Fatalf("SNI pg.edge.test on the shared port: %v", err)
		}
		c.Close(ctx)
	})
	t.Run("no machine reachable", func(t *testing.T) {
		_, err := e.connect(ctx, "sslmode=require", e.downPort)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "57P03" || !strings.Contains(pe.Message, `no machine of app "pgdown" is reachable`) {
			t.Fatalf("error %v, want FATAL 57P03 naming the app", err)
		}
	})
}

func TestPGTLSBadClients(t *testing.T) {
	e := startPGEdge(t)
	for _, tc := range []struct {
		name string
		send []byte
		want string // in the ErrorResponse; "" for a plain close
	}{
		{"oversized startup packet", binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 20000), 196608), "invalid length of startup packet"},
		{"short length", []byte{0, 0, 0, 4, 0, 0, 0, 0}, "invalid length of startup packet"},
		{"protocol 2", []byte{0, 0, 0, 9, 0, 2, 0, 0, 0}, "unsupported frontend protocol 2.0"},
		{"unterminated parameters", []byte{0, 0, 0, 10, 0, 3, 0, 0, 'a', 'b'}, "malformed startup packet"},
		{"silent client", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", "127.0.0.1:"+e.plainPort)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write(tc.send)
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("the edge should close the connection (handshake_timeout 500ms on this port): %v", err)
			}
			if tc.want == "" {
				if len(got) != 0 {
					t.Fatalf("got %q", got)
				}
				return
			}
			if len(got) == 0 || got[0] != 'E' || !strings.Contains(string(got), tc.want) || !strings.Contains(string(got), "08P01") {
				t.Fatalf("got %q, want an ErrorResponse 08P01 with %q", got, tc.want)
			}
		})
	}
}

func TestPGTLSCancel(t *testing.T) {
	e := startPGEdge(t)
	ctx := context.Background()
	c, err := e.connect(ctx, "sslmode=require", e.port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	qctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = c.Exec(qctx, "select pg_sleep(30)")
	took := time.Since(start)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57014" {
		t.Fatalf("error %v, want 57014 query_canceled (the CancelRequest reached the machine)", err)
	}
	if took > 2*time.Second {
		t.Fatalf("the cancel took %v", took)
	}
}

func TestPGTLSCopyAndConcurrency(t *testing.T) {
	e := startPGEdge(t)
	ctx := context.Background()
	c, err := e.connect(ctx, "sslmode=require", e.port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)

	t.Run("100 MB through COPY", func(t *testing.T) {
		if _, err := c.Exec(ctx, "create temp table big (i int, t text)"); err != nil {
			t.Fatal(err)
		}
		const rows, size = 100_000, 1000
		src := stream("copy")
		h := md5.New()
		var rowsIn [][]any
		for i := range rows {
			b := make([]byte, size/2)
			io.ReadFull(src, b)
			s := hex.EncodeToString(b)
			sum := md5.Sum([]byte(s))
			h.Write([]byte(hex.EncodeToString(sum[:])))
			rowsIn = append(rowsIn, []any{i, s})
		}
		n, err := c.CopyFrom(ctx, pgx.Identifier{"big"}, []string{"i", "t"}, pgx.CopyFromRows(rowsIn))
		if err != nil || n != rows {
			t.Fatalf("copied %d rows: %v", n, err)
		}
		var total int64
		var digest string
		if err := c.QueryRow(ctx, "select sum(length(t)), md5(string_agg(md5(t), '' order by i)) from big").Scan(&total, &digest); err != nil {
			t.Fatal(err)
		}
		if total != rows*size || digest != hex.EncodeToString(h.Sum(nil)) {
			t.Fatalf("the machine stored %d bytes, digest %s; want %d, %x", total, digest, rows*size, h.Sum(nil))
		}
	})

	t.Run("concurrent sessions", func(t *testing.T) {
		var limit int
		if err := c.QueryRow(ctx, "select current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int - (select count(*) from pg_stat_activity)::int - 5").Scan(&limit); err != nil {
			t.Fatal(err)
		}
		n := min(200, limit)
		if n < 50 {
			t.Fatalf("the server has room for only %d more sessions", n)
		}
		var wg sync.WaitGroup
		pids := make(chan int32, n)
		errs := make(chan error, n)
		release := make(chan struct{})
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s, err := e.connect(ctx, "sslmode=require", e.port)
				if err != nil {
					errs <- err
					return
				}
				defer s.Close(ctx)
				var pid int32
				if err := s.QueryRow(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
					errs <- err
					return
				}
				pids <- pid
				<-release // hold the session until all are open
			}()
		}
		seen := map[int32]bool{}
		for range n {
			select {
			case pid := <-pids:
				seen[pid] = true
			case err := <-errs:
				close(release)
				t.Fatal(err)
			case <-time.After(60 * time.Second):
				close(release)
				t.Fatalf("%d of %d sessions open after 60s", len(seen), n)
			}
		}
		close(release)
		wg.Wait()
		if len(seen) != n {
			t.Fatalf("%d distinct backends for %d sessions", len(seen), n)
		}
		t.Logf("%d sessions open at once through the edge (server max_connections allows %d more)", n, limit)
	})
}

func TestPSQL(t *testing.T) {
	e := startPGEdge(t)
	psql := requireTool(t, "psql")
	run := func(conninfo string) (string, error) {
		cmd := exec.Command(psql, conninfo, "-Atc", "select 'through the edge: ' || (41 + 1)")
		cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=5")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run(fmt.Sprintf("host=pg.edge.test hostaddr=127.0.0.1 port=%s user=postgres dbname=test sslmode=require", e.port))
	if err != nil || strings.TrimSpace(out) != "through the edge: 42" {
		t.Fatalf("psql sslmode=require: %v\n%s", err, out)
	}
	out, err = run(fmt.Sprintf("host=pg.edge.test hostaddr=127.0.0.1 port=%s user=postgres dbname=test sslmode=verify-full sslrootcert=%s", e.port, e.rootFile))
	if err != nil || strings.TrimSpace(out) != "through the edge: 42" {
		t.Fatalf("psql sslmode=verify-full: %v\n%s", err, out)
	}
	out, err = run(fmt.Sprintf("host=127.0.0.1 port=%s user=postgres dbname=test sslmode=require", e.plainPort))
	if err != nil || strings.TrimSpace(out) != "through the edge: 42" {
		t.Fatalf("psql by address (no SNI) gets the app's certificate: %v\n%s", err, out)
	}
	out, err = run(fmt.Sprintf("host=127.0.0.1 port=%s user=postgres dbname=test sslmode=disable", e.port))
	if err == nil || !strings.Contains(out, "FATAL:  TLS is required") {
		t.Fatalf("psql sslmode=disable should print the edge's error, got: %v\n%s", err, out)
	}
	t.Logf("psql sslmode=disable prints: %s", strings.TrimSpace(out))
}

// startPgbouncer runs a pgbouncer in transaction pooling mode in front of
// the local PostgreSQL on a free port, and returns the port. As root it
// runs as the postgres user (pgbouncer refuses root). Under CI=true a
// missing pgbouncer fails the test; elsewhere it skips.
func startPgbouncer(t *testing.T) string {
	t.Helper()
	bin := requireTool(t, "pgbouncer")
	// a folder the postgres user can reach (t.TempDir's parent is 0700)
	dir, err := os.MkdirTemp("", "flyedge-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	port := freePort()
	ini := fmt.Sprintf(`[databases]
* = host=127.0.0.1 port=5432
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %s
unix_socket_dir =
auth_type = trust
auth_file = %s/users.txt
admin_users = postgres
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
ignore_startup_parameters = extra_float_digits
logfile = %s/pgbouncer.log
pidfile = %s/pgbouncer.pid
`, port, dir, dir, dir)
	os.WriteFile(filepath.Join(dir, "users.txt"), []byte(`"postgres" ""`+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "pgbouncer.ini"), []byte(ini), 0o644)
	args := []string{filepath.Join(dir, "pgbouncer.ini")}
	if os.Geteuid() == 0 {
		args = append([]string{"-u", "postgres"}, args...)
	}
	p := exec.Command(bin, args...)
	var log logBuf
	p.Stdout, p.Stderr = &log, &log
	p.SysProcAttr = dieWithTests()
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	ownProcess(p.Process.Pid)
	t.Cleanup(func() { stopProcess(p) })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c, err := net.Dial("tcp", "127.0.0.1:"+port)
		if err == nil {
			c.Close()
			return port
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			t.Fatalf("pgbouncer does not listen on %s:\n%s%s", port, log.String(), b)
		}
	}
}

// TestPGTLS200Sessions: 200 sessions open at once through pg_tls, to an
// app whose machine is a pgbouncer in front of the PostgreSQL server (the
// server's own max_connections, 100 here, is below 200), each running a
// query while all are open; pgbouncer counts 200 clients.
func TestPGTLS200Sessions(t *testing.T) {
	requirePostgres(t)
	bouncer := startPgbouncer(t)
	port := freePort()
	cfg := fmt.Sprintf(`{
	"admin": {"listen": %q, "config": {"persist": false}},
	"apps": {
		"fly": {"base_domain": "edge.test", "apps": {
			"pool": {"services": [{"internal_port": %s, "ports": [{"port": %s, "handlers": ["pg_tls"]}]}],
				"machines": [{"id": "00000000000d21", "region": "iad", "address": "127.0.0.1"}]}
		}},
		"tls": {"certificates": {"automate": ["pool.edge.test"]}, "automation": {"policies": [{"issuers": [{"module": "internal"}]}]}},
		"pki": {"certificate_authorities": {"local": {"install_trust": false}}},
		"layer4": {"servers": {"pool": {"listen": [":%[3]s"], "routes": [{"handle": [{"handler": "pg_tls"}, {"handler": "fly_proxy"}]}]}}}
	}
}`, adminAddr, bouncer, port)
	if err := load(t, cfg, "json"); err != nil {
		t.Fatal(err)
	}
	caddyRoots(t, caddyHome)
	root := filepath.Join(caddyHome, "data", "caddy", "pki", "authorities", "local", "root.crt")
	connect := func(ctx context.Context, db string) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig(fmt.Sprintf("host=pool.edge.test port=%s user=postgres dbname=%s sslrootcert=%s sslmode=verify-full connect_timeout=10", port, db, root))
		if err != nil {
			return nil, err
		}
		cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil }
		cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol // transaction pooling
		return pgx.ConnectConfig(ctx, cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	waitFor(t, "the certificate of pool.edge.test", func() bool {
		c, err := connect(ctx, "test")
		if err == nil {
			c.Close(ctx)
		}
		return err == nil
	})

	const n = 200
	var wg sync.WaitGroup
	opened, ran := make(chan error, n), make(chan error, n)
	all, done := make(chan struct{}), make(chan struct{})
	for i := range n {
		wg.Go(func() {
			c, err := connect(ctx, "test")
			opened <- err
			if err != nil {
				return
			}
			defer c.Close(ctx)
			<-all // every session is open
			var got int
			err = c.QueryRow(ctx, fmt.Sprintf("select %d + 1", i)).Scan(&got)
			if err == nil && got != i+1 {
				err = fmt.Errorf("session %d got %d", i, got)
			}
			ran <- err
			<-done
		})
	}
	for range n {
		if err := <-opened; err != nil {
			close(all)
			close(done)
			wg.Wait()
			t.Fatalf("opening a session: %v", err)
		}
	}
	// pgbouncer's own count of clients
	admin, err := connect(ctx, "pgbouncer")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var clients int
	rows, err := admin.Query(ctx, "show pools")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		vals, _ := rows.Values()
		descs := rows.FieldDescriptions()
		db := ""
		for j, d := range descs {
			if d.Name == "database" {
				db = fmt.Sprint(vals[j])
			}
			if (d.Name == "cl_active" || d.Name == "cl_waiting") && db == "test" {
				var v int
				fmt.Sscan(fmt.Sprint(vals[j]), &v)
				clients += v
			}
		}
	}
	rows.Close()
	close(all)
	for range n {
		if err := <-ran; err != nil {
			close(done)
			wg.Wait()
			t.Fatalf("query while all %d sessions are open: %v", n, err)
		}
	}
	close(done)
	wg.Wait()
	if clients != n {
		t.Errorf("pgbouncer saw %d clients of database test, want %d", clients, n)
	}
}

// fakePG is a tenant's PostgreSQL look-alike: it answers a startup with
// AuthenticationOk, BackendKeyData (pid 7, secret 42) and ReadyForQuery,
// and takes cancel requests without ever answering or closing them.
type fakePG struct {
	ln      net.Listener
	cancels atomic.Int32
	mu      sync.Mutex
	held    []net.Conn
}

func startFakePG(t *testing.T, addr string) *fakePG {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakePG{ln: ln}
	t.Cleanup(func() {
		ln.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, c := range f.held {
			c.Close()
		}
	})
	testkit.Serve(t, ln, func(c net.Conn) {
		f.mu.Lock()
		f.held = append(f.held, c)
		f.mu.Unlock()
		f.serve(c)
	})
	return f
}

func (f *fakePG) serve(c net.Conn) {
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	n := binary.BigEndian.Uint32(hdr[:4])
	if binary.BigEndian.Uint32(hdr[4:]) == 80877102 { // CancelRequest
		f.cancels.Add(1)
		return // held open, unanswered
	}
	if n < 8 || n > 10000 {
		return
	}
	io.CopyN(io.Discard, c, int64(n-8))
	msg := []byte{'R', 0, 0, 0, 8, 0, 0, 0, 0}                   // AuthenticationOk
	msg = append(msg, 'K', 0, 0, 0, 12, 0, 0, 0, 7, 0, 0, 0, 42) // BackendKeyData
	msg = append(msg, 'Z', 0, 0, 0, 5, 'I')                      // ReadyForQuery
	c.Write(msg)
	io.Copy(io.Discard, c)
}

// TestPGTLSCancelBounded: a CancelRequest reaches a machine only through
// an address of the session's app, and a machine that takes cancels and
// never closes them holds the edge's sockets only until cancel_timeout.
func TestPGTLSCancelBounded(t *testing.T) {
	requireCaddy(t)
	port, mport := freePort(), freePort()
	machine := startFakePG(t, "127.0.59.1:"+mport)
	storage := t.TempDir()
	cfg := fmt.Sprintf(`{
	"admin": {"listen": %q, "config": {"persist": false}},
	"storage": {"module": "file_system", "root": %q},
	"apps": {
		"fly": {"base_domain": "cancel.test", "apps": {
			"fake": {"services": [{"internal_port": %[3]s, "ports": [{"port": %[4]s, "handlers": ["pg_tls"]}]}],
				"machines": [{"id": "0000000000c101", "region": "iad", "address": "127.0.59.1"}]},
			"other": {"services": [{"internal_port": %[3]s, "ports": [{"port": %[4]s, "handlers": ["pg_tls"]}]}],
				"machines": [{"id": "0000000000c102", "region": "iad", "address": "127.0.59.1"}]}
		}},
		"fly_ips": {"v4": [%q], "auto_allocate": false},
		"layer4": {"servers": {"pg": {"listen": [":%[4]s"], "routes": [{"handle": [
			{"handler": "pg_tls", "allow_plaintext": true, "cancel_timeout": "1s"}, {"handler": "fly_proxy"}]}]}}}
	}
}`, adminAddr, storage, mport, port, v4Pool)
	if err := load(t, cfg, "json"); err != nil {
		t.Fatal(err)
	}
	fake := allocate(t, adminAddr, "fake", "v4")
	other := allocate(t, adminAddr, "other", "v4")
	nobody := "127.30.0.200" // in the pool, held by no app

	// a session of fake, so the edge knows its cancel key
	sess, err := net.Dial("tcp", net.JoinHostPort(fake, port))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	startup := binary.BigEndian.AppendUint32(nil, 0)
	startup = binary.BigEndian.AppendUint32(startup, 196608)
	startup = append(startup, "user\x00postgres\x00\x00"...)
	binary.BigEndian.PutUint32(startup, uint32(len(startup)))
	sess.Write(startup)
	sess.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 0, 64)
	for len(got) == 0 || got[len(got)-6] != 'Z' {
		b := make([]byte, 64)
		n, err := sess.Read(b)
		if err != nil {
			t.Fatalf("session startup: %v after %q", err, got)
		}
		got = append(got, b[:n]...)
	}
	cancelReq := []byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 7, 0, 0, 0, 42}
	sendCancel := func(addr string) {
		c, err := net.Dial("tcp", net.JoinHostPort(addr, port))
		if err != nil {
			t.Error(err)
			return
		}
		c.Write(cancelReq)
		c.Close()
	}

	// the edge closes a cancel it does not forward at once, and one it
	// forwards only once the machine has it (and then holds it up to
	// cancel_timeout): when the edge has closed these, a cancel it
	// forwarded would be in the machine's count
	for _, addr := range []string{nobody, other} {
		c, err := net.Dial("tcp", net.JoinHostPort(addr, port))
		if err != nil {
			t.Fatal(err)
		}
		c.Write(cancelReq)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.Copy(io.Discard, c)
		c.Close()
		if err != nil {
			t.Fatalf("a cancel sent to %s: the edge did not close it: %v", addr, err)
		}
	}
	if n := machine.cancels.Load(); n != 0 {
		t.Fatalf("%d cancels sent to an address of no app or of another app reached the machine", n)
	}

	before := openFiles(t, caddyPID)
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				sendCancel(fake)
			}
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for machine.cancels.Load() < 500 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := machine.cancels.Load(); n != 500 {
		t.Fatalf("%d of 500 cancels reached the machine", n)
	}
	peak := openFiles(t, caddyPID)
	var after int
	for time.Now().Before(deadline) {
		if after = openFiles(t, caddyPID); after <= before+10 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("edge open files: %d before, %d with 500 cancels pending, %d after cancel_timeout", before, peak, after)
	if after > before+10 {
		t.Errorf("edge holds %d open files after cancel_timeout, %d before the cancels", after, before)
	}
}

// TestPGTLSByAddress: pg_tls routes by the address too: a database app
// on its dedicated IPv4 (clients connecting by IP get its certificate),
// another on the shared IPv4 by TLS server name, and nothing else.
func TestPGTLSByAddress(t *testing.T) {
	requirePostgres(t)
	storage, port := t.TempDir(), freePort()
	edgeCount++
	domain := fmt.Sprintf("pgaddr-%d.test", edgeCount) // see startIPEdge
	cfg := fmt.Sprintf(`{
	"admin": {"listen": %q, "config": {"persist": false}},
	"storage": {"module": "file_system", "root": %q},
	"apps": {
		"fly": {"base_domain": %q, "apps": {
			"db": {"services": [{"internal_port": 5432, "ports": [{"port": %[4]s, "handlers": ["pg_tls"]}]}],
				"machines": [{"id": "0000000000d101", "region": "iad", "address": "127.0.0.1"}]},
			"db2": {"services": [{"internal_port": 5432, "ports": [{"port": %[4]s, "handlers": ["pg_tls"]}]}],
				"machines": [{"id": "0000000000d102", "region": "iad", "address": "127.0.0.1"}]}
		}},
		"fly_ips": {"shared_v4": [%q], "v4": [%q], "auto_allocate": false},
		"tls": {"automation": {
			"policies": [{"issuers": [{"module": "internal"}], "on_demand": true}],
			"on_demand": {"permission": {"module": "fly"}}
		}},
		"pki": {"certificate_authorities": {"local": {"install_trust": false}}},
		"layer4": {"servers": {"pg": {"listen": [":%[4]s"], "routes": [{"handle": [{"handler": "pg_tls"}, {"handler": "fly_proxy"}]}]}}}
	}
}`, adminAddr, storage, domain, port, sharedV4, v4Pool)
	if err := load(t, cfg, "json"); err != nil {
		t.Fatal(err)
	}
	dedicated := allocate(t, adminAddr, "db", "v4")
	allocate(t, adminAddr, "db2", "shared_v4")
	storageRoots(t, storage)
	root := storage + "/pki/authorities/local/root.crt"
	connect := func(host, ip, mode string) (string, error) {
		cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=postgres dbname=test sslrootcert=%s sslmode=%s connect_timeout=5", host, port, root, mode))
		if err != nil {
			return "", err
		}
		cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{ip}, nil }
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return "", err
		}
		defer c.Close(ctx)
		var s string
		err = c.QueryRow(ctx, "select 'ok ' || current_database()").Scan(&s)
		return s, err
	}
	for _, tc := range []struct {
		name, host, ip, mode string
		ok                   bool
	}{
		{"db by name on its dedicated address", "db." + domain, dedicated, "verify-full", true},
		{"db by IP (no SNI) on its dedicated address", dedicated, dedicated, "require", true},
		{"db2 by name on the shared address", "db2." + domain, sharedV4, "verify-full", true},
		{"db on the shared address it does not hold", "db." + domain, sharedV4, "require", false},
		{"no name on the shared address", sharedV4, sharedV4, "require", false},
		{"an address of no app", "db." + domain, "127.0.0.1", "require", false},
	} {
		got, err := connect(tc.host, tc.ip, tc.mode)
		if tc.ok && (err != nil || got != "ok test") {
			t.Errorf("%s: %q, %v", tc.name, got, err)
		}
		if !tc.ok && err == nil {
			t.Errorf("%s: connected (%q), want refused", tc.name, got)
		}
	}
}
