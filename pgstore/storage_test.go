package pgstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
)

// The tests use the PostgreSQL server at 127.0.0.1:5432, in a scratch
// database of their own per test (testkit.ScratchDB): without a server
// they are skipped, or fail under CI=true.

// newStorage provisions a Storage on dsn, with a connection pool of its
// own (as another process would have).
func newStorage(t testing.TB, dsn string, lease time.Duration) certmagic.Storage {
	t.Helper()
	s := &Storage{DSN: dsn, LockLease: caddy.Duration(lease), LockPoll: caddy.Duration(50 * time.Millisecond)}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Cleanup() })
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	own := &db{pool: pool, table: s.Table}
	t.Cleanup(func() { own.Destruct() }) // stops a listener, then closes the pool
	s.db = own
	st, err := s.CertMagicStorage()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestStorageAsFileStorage runs one script of Store, Load, Exists, Stat,
// List and Delete against certmagic's FileStorage and against
// PostgreSQL, and wants the same answers.
func TestStorageAsFileStorage(t *testing.T) {
	dsn := testkit.ScratchDB(t)
	pg := newStorage(t, dsn, 10*time.Second)
	file := &certmagic.FileStorage{Path: t.TempDir()}
	ctx := context.Background()
	run := func(st certmagic.Storage) []string {
		var out []string
		say := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
		for _, k := range []string{"certificates/acme/a.example/a.example.crt", "certificates/acme/a.example/a.example.key",
			"certificates/acme/b.example/b.example.crt", "fly/state/snapshot", "fly/state/log/0000000000000001", "top"} {
			if err := st.Store(ctx, k, []byte("value of "+k)); err != nil {
				t.Fatal(err)
			}
		}
		st.Store(ctx, "top", []byte("new"))
		st.Store(ctx, "empty", nil)
		for _, k := range []string{"top", "empty", "fly/state/snapshot", "missing", "fly/state"} {
			v, err := st.Load(ctx, k)
			// a directory is no key: FileStorage says "is a directory"
			say("load %s: %q error %v", k, v, err != nil)
		}
		for _, k := range []string{"top", "fly", "fly/state", "certificates/acme", "fly/sta", "nope"} {
			say("exists %s: %v", k, st.Exists(ctx, k))
			info, err := st.Stat(ctx, k)
			if !info.IsTerminal {
				info.Size = 0 // a directory's size is the file system's
			}
			say("stat %s: %s terminal %v size %d notexist %v", k, info.Key, info.IsTerminal, info.Size, errors.Is(err, fs.ErrNotExist))
		}
		for _, p := range []string{"certificates", "certificates/acme", "fly", "fly/state/log", "nope"} {
			for _, rec := range []bool{false, true} {
				keys, err := st.List(ctx, p, rec)
				slices.Sort(keys)
				say("list %s recursive %v: %v notexist %v", p, rec, keys, errors.Is(err, fs.ErrNotExist))
			}
		}
		say("delete missing: %v", st.Delete(ctx, "not/there"))
		say("delete dir: %v", st.Delete(ctx, "certificates/acme/a.example"))
		say("after: a %v b %v", st.Exists(ctx, "certificates/acme/a.example/a.example.crt"), st.Exists(ctx, "certificates/acme/b.example/b.example.crt"))
		say("delete key: %v, exists %v", st.Delete(ctx, "top"), st.Exists(ctx, "top"))
		return out
	}
	want, got := run(file), run(pg)
	for i := range max(len(want), len(got)) {
		var w, g string
		if i < len(want) {
			w = want[i]
		}
		if i < len(got) {
			g = got[i]
		}
		if w != g {
			t.Errorf("FileStorage: %s\nPostgreSQL:  %s", w, g)
		}
	}
	if info, err := pg.Stat(ctx, "fly/state/snapshot"); err != nil || time.Since(info.Modified) > time.Minute {
		t.Errorf("Stat's modification time: %v, %v", info.Modified, err)
	}
	if _, err := pg.Load(ctx, "missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a missing key: %v, want fs.ErrNotExist", err)
	}
	u, _ := url.Parse(dsn) // user@host/database, as the scratch database has them
	if s := fmt.Sprint(pg); strings.Contains(s, "password") || !strings.HasPrefix(s, "postgres:"+u.User.Username()+"@"+u.Host+u.Path+"/") {
		t.Errorf("the storage's name: %s", s)
	}
}

// TestLockContention: one holder at a time across two storages with
// pools of their own; a waiter gets the lock once it is released, and a
// holder keeps it past its lease by renewing.
func TestLockContention(t *testing.T) {
	dsn := testkit.ScratchDB(t)
	lease := time.Second
	a, b := newStorage(t, dsn, lease), newStorage(t, dsn, lease)
	ctx := context.Background()
	if err := a.Lock(ctx, "job"); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.(certmagic.TryLocker).TryLock(ctx, "job"); ok || err != nil {
		t.Fatalf("a second holder: %v, %v", ok, err)
	}
	// a holds it three leases long; b tries all along
	waitCtx, cancel := context.WithTimeout(ctx, 3*lease)
	err := b.Lock(waitCtx, "job")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("b took the lock a holds and renews: %v", err)
	}
	got := make(chan time.Time, 1)
	go func() {
		if err := b.Lock(ctx, "job"); err == nil {
			got <- time.Now()
		}
	}()
	waitLockWaiters(t, b, 1)
	released := time.Now()
	if err := a.Unlock(ctx, "job"); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-got:
		t.Logf("b got the lock %v after a released it", at.Sub(released).Round(time.Millisecond))
	case <-time.After(2 * time.Second):
		t.Fatal("b did not get the released lock")
	}
	if err := b.Unlock(ctx, "job"); err != nil {
		t.Fatal(err)
	}
	if err := a.Unlock(ctx, "job"); err == nil {
		t.Error("unlocking a lock not held: no error")
	}
	// other names are independent
	if err := a.Lock(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := b.(certmagic.TryLocker).TryLock(ctx, "y"); !ok {
		t.Error("lock y taken because x is")
	}
	a.Unlock(ctx, "x")
	b.Unlock(ctx, "y")
}

// TestLockOfKilledHolder: a process that holds a lock and is killed
// (SIGKILL: no unlock, no renewal) gives the lock up after its lease.
func TestLockOfKilledHolder(t *testing.T) {
	if os.Getenv("PGSTORE_HOLDER_DSN") != "" {
		holdLock()
		return
	}
	dsn := testkit.ScratchDB(t)
	lease := 2 * time.Second
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockOfKilledHolder$")
	cmd.Env = append(os.Environ(), "PGSTORE_HOLDER_DSN="+dsn, "PGSTORE_HOLDER_LEASE="+lease.String())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "locked\n" {
		t.Fatalf("the holder says %q", line)
	}
	st := newStorage(t, dsn, lease)
	ctx := context.Background()
	if ok, _ := st.(certmagic.TryLocker).TryLock(ctx, "job"); ok {
		t.Fatal("the lock of a live holder was taken")
	}
	// it renews: still held once the lease it had when we looked ran out
	// by the database's clock, which decides expiry
	waitLeaseRunsOut(t, dsn, "job")
	if ok, _ := st.(certmagic.TryLocker).TryLock(ctx, "job"); ok {
		t.Fatal("the lock of a live, renewing holder was taken after its first lease")
	}
	cmd.Process.Signal(os.Kill)
	cmd.Wait()
	killed := time.Now()
	waitCtx, cancel := context.WithTimeout(ctx, lease+2*time.Second)
	defer cancel()
	if err := st.Lock(waitCtx, "job"); err != nil {
		t.Fatalf("the lock of a killed holder: %v", err)
	}
	t.Logf("taken %v after the holder was killed (lease %v)", time.Since(killed).Round(time.Millisecond), lease)
	st.Unlock(ctx, "job")
}

// waitLockWaiters waits until n subscribers of st's connection pool
// listen for released locks: a Lock that found its lock held subscribes
// before it waits.
func waitLockWaiters(t *testing.T, st certmagic.Storage, n int) {
	t.Helper()
	d := st.(*store).db
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		d.subsMu.Lock()
		waiting := len(d.lockSubs)
		d.subsMu.Unlock()
		if waiting >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d waiters for a released lock after 5 s", waiting, n)
		}
	}
}

// waitLeaseRunsOut reads when the lease of lock name runs out and waits
// until the database's clock, which decides expiry, is past it: the lock
// is held after that only if its holder renewed it.
func waitLeaseRunsOut(t *testing.T, dsn, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var expires time.Time
	if err := conn.QueryRow(ctx, `SELECT expires FROM flyedge_storage WHERE kind = 'l' AND key = $1`, name).Scan(&expires); err != nil {
		t.Fatalf("the lease of lock %s: %v", name, err)
	}
	for {
		var past bool
		if err := conn.QueryRow(ctx, `SELECT now() > $1`, expires).Scan(&past); err != nil {
			t.Fatalf("waiting for the lease of lock %s to run out: %v", name, err)
		}
		if past {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// holdLock is the holder process of TestLockOfKilledHolder.
func holdLock() {
	lease, _ := time.ParseDuration(os.Getenv("PGSTORE_HOLDER_LEASE"))
	s := &Storage{DSN: os.Getenv("PGSTORE_HOLDER_DSN"), LockLease: caddy.Duration(lease), LockPoll: caddy.Duration(50 * time.Millisecond)}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := s.Provision(ctx); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	st, _ := s.CertMagicStorage()
	if err := st.Lock(context.Background(), "job"); err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	fmt.Println("locked")
	select {} // until killed
}

func TestCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Storage
		err  string
	}{
		{in: `postgres {env.FLYEDGE_STORAGE_DSN}`, want: Storage{DSN: "{env.FLYEDGE_STORAGE_DSN}"}},
		{in: "postgres {\n dsn postgres://db/x\n table edge_a\n lock_lease 5s\n lock_poll 100ms\n}",
			want: Storage{DSN: "postgres://db/x", Table: "edge_a", LockLease: caddy.Duration(5 * time.Second), LockPoll: caddy.Duration(100 * time.Millisecond)}},
		{in: "postgres a b", err: "wrong argument count"},
		{in: "postgres a {\n dsn b\n}", err: "dsn already specified"},
		{in: "postgres {\n lease 5s\n}", err: "unrecognized postgres storage option 'lease'"},
		{in: "postgres {\n lock_lease soon\n}", err: `lock_lease "soon"`},
	} {
		var s Storage
		err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || s != tc.want {
			t.Errorf("%q: %+v, %v", tc.in, s, err)
		}
	}
}

func TestProvisionErrors(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	t.Setenv("FLYEDGE_TEST_DSN", "postgres://u:secret@127.0.0.1:1/db")
	for _, tc := range []struct {
		s    Storage
		want string
	}{
		{Storage{}, "dsn: the PostgreSQL connection string is required"},
		{Storage{DSN: "{env.FLYEDGE_NOT_SET}"}, "dsn: the PostgreSQL connection string is required"},
		{Storage{DSN: "postgres://x/y", Table: "drop table;"}, `table: "drop table;" is not a table name`},
		{Storage{DSN: "postgres://x/y", LockLease: caddy.Duration(time.Millisecond)}, "lock_lease must be at least 1s"},
		{Storage{DSN: "postgres://u:secret@host:notaport/db"}, "dsn: "},
	} {
		err := tc.s.Provision(ctx)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%+v: %v, want %q (and no password)", tc.s, err, tc.want)
		}
	}
	s := Storage{DSN: "{env.FLYEDGE_TEST_DSN}"}
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Cleanup()
	st, _ := s.CertMagicStorage()
	if name := fmt.Sprint(st); name != "postgres:u@127.0.0.1:1/db/flyedge_storage" {
		t.Errorf("the storage's name is %q", name)
	}
}

// TestSubscribeChanges: a key stored through one pool is told to the
// subscribers of another, as PostgreSQL notifies it.
func TestSubscribeChanges(t *testing.T) {
	dsn := testkit.ScratchDB(t)
	a, b := newStorage(t, dsn, 10*time.Second), newStorage(t, dsn, 10*time.Second)
	ch, stop := b.(interface {
		SubscribeChanges() (<-chan string, func())
	}).SubscribeChanges()
	defer stop()
	// the listener says "" once it listens
	select {
	case k := <-ch:
		if k != "" {
			t.Fatalf("first notification %q, want the listener's start", k)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the listener did not start")
	}
	ctx := context.Background()
	for _, key := range []string{"fly/state/log/0000000000000001", "certificates/x/y.crt"} {
		if err := a.Store(ctx, key, []byte("v")); err != nil {
			t.Fatal(err)
		}
		select {
		case k := <-ch:
			if k != key {
				t.Errorf("notified %q, want %q", k, key)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no notification for %s", key)
		}
	}
}

// TestLockWokenByRelease: a waiter learns of the release from
// PostgreSQL, not from its poll (which this test makes an hour long).
func TestLockWokenByRelease(t *testing.T) {
	dsn := testkit.ScratchDB(t)
	a, b := newStorage(t, dsn, 10*time.Second), newStorage(t, dsn, 10*time.Second)
	b.(*store).poll = time.Hour
	ctx := context.Background()
	if err := a.Lock(ctx, "job"); err != nil {
		t.Fatal(err)
	}
	// the listener is up before b waits, so the start of the listener,
	// which wakes every waiter, cannot be what wakes b
	probe, stop := b.(*store).db.subscribeLocks()
	defer stop()
	select {
	case <-probe:
	case <-time.After(5 * time.Second):
		t.Fatal("the listener for released locks did not start")
	}
	got := make(chan error, 1)
	go func() { got <- b.Lock(ctx, "job") }()
	waitLockWaiters(t, b, 2) // the probe and b
	released := time.Now()
	if err := a.Unlock(ctx, "job"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("the waiter got the lock %v after the release", time.Since(released).Round(time.Microsecond))
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter was not woken by the release")
	}
	b.Unlock(ctx, "job")
}

// TestSilentDatabase: with PostgreSQL silent (no answer, no refusal),
// every call returns by its context's deadline, even while another call
// with no deadline waits for the database to create the table (which
// held a mutex for the whole connection timeout), and on a connection
// the pool held before; Timeout is the DSN's connect_timeout.
func TestSilentDatabase(t *testing.T) {
	dsn := testkit.ScratchDB(t)
	proxy := testkit.NewCuttableProxy(t, testkit.PostgresAddr)
	dsn = strings.Replace(dsn, testkit.PostgresAddr, proxy.Addr(), 1) + "&connect_timeout=10"
	s := &Storage{DSN: dsn}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Cleanup()
	st, _ := s.CertMagicStorage()
	if ts, ok := st.(interface{ Timeout() time.Duration }); !ok || ts.Timeout() != 10*time.Second {
		t.Errorf("Timeout(): %t, want the DSN's connect_timeout, 10s", ok)
	}
	bounded := func(what string, call func(context.Context) error) {
		t.Helper()
		const limit = time.Second
		ctx, cancel := context.WithTimeout(context.Background(), limit)
		defer cancel()
		began := time.Now()
		err := call(ctx)
		took := time.Since(began)
		if err == nil {
			t.Errorf("%s: no error from a silent database", what)
		}
		if took > limit+time.Second {
			t.Errorf("%s: returned after %v, want about its deadline (%v)", what, took.Round(time.Millisecond), limit)
		} else {
			t.Logf("%s: %v after %v", what, err, took.Round(time.Millisecond))
		}
	}

	proxy.Blackhole()
	defer proxy.Restore() // before the pool closes
	waiting := make(chan struct{})
	go func() { // no deadline: the connection timeout ends it
		defer close(waiting)
		st.Load(context.Background(), "k")
	}()
	time.Sleep(200 * time.Millisecond)
	bounded("Store before the table exists", func(ctx context.Context) error { return st.Store(ctx, "k", []byte("v")) })
	bounded("Lock before the table exists", func(ctx context.Context) error { return st.Lock(ctx, "job") })
	<-waiting

	proxy.Restore()
	if err := st.Store(context.Background(), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	proxy.Blackhole()
	bounded("Store", func(ctx context.Context) error { return st.Store(ctx, "k", []byte("w")) })
	bounded("Load", func(ctx context.Context) error { _, err := st.Load(ctx, "k"); return err })
	bounded("Lock", func(ctx context.Context) error { return st.Lock(ctx, "job") })
	bounded("List", func(ctx context.Context) error { _, err := st.List(ctx, "", true); return err })
}

// TestListenerAfterForgottenConnection: after an outage in which the
// database forgot the listening connection (it stays open and silent),
// the listener finds out by itself, reconnects, and tells of keys stored
// again.
func TestListenerAfterForgottenConnection(t *testing.T) {
	old := listenCheck
	listenCheck = 500 * time.Millisecond
	t.Cleanup(func() { listenCheck = old })
	direct := testkit.ScratchDB(t)
	proxy := testkit.NewCuttableProxy(t, testkit.PostgresAddr)
	dsn := strings.Replace(direct, testkit.PostgresAddr, proxy.Addr(), 1) + "&connect_timeout=2"
	s := &Storage{DSN: dsn}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Cleanup()
	st, _ := s.CertMagicStorage()
	other := newStorage(t, direct, 10*time.Second)
	if err := other.Store(context.Background(), "k", []byte("v")); err != nil { // creates the table
		t.Fatal(err)
	}
	ch, stop := st.(interface {
		SubscribeChanges() (<-chan string, func())
	}).SubscribeChanges()
	defer stop()
	select {
	case <-ch: // the listener listens
	case <-time.After(5 * time.Second):
		t.Fatal("the listener did not start")
	}
	proxy.Blackhole()
	time.Sleep(300 * time.Millisecond)
	proxy.RestoreForgetting()
	defer proxy.Restore() // closes the forgotten connections before the pool closes
	restored := time.Now()
	for deadline := time.After(15 * time.Second); ; {
		if err := other.Store(context.Background(), "fly/state/log/1", []byte("v")); err != nil {
			t.Fatal(err)
		}
		select {
		case k := <-ch:
			if k == "fly/state/log/1" {
				t.Logf("notified again %v after the outage", time.Since(restored).Round(time.Millisecond))
				return
			}
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatal("no notification 15 s after the outage: the listener still waits on the forgotten connection")
		}
	}
}
