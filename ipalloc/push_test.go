package ipalloc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
	"github.com/flyedge/caddy-flyedge/pgstore"
	"github.com/flyedge/caddy-flyedge/routing"
)

// pgStorage returns a caddy.storage.postgres storage in a database of the
// test's own (dropped at the end), as one edge process would open it.
func pgStorage(t testing.TB, dsn string) certmagic.Storage {
	t.Helper()
	s := &pgstore.Storage{DSN: dsn}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := s.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Cleanup() })
	st, err := s.CertMagicStorage()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestPushOnPostgres: on caddy.storage.postgres an edge learns of
// another's change by PostgreSQL's notification, not by the poll (which
// this test turns off).
func TestPushOnPostgres(t *testing.T) {
	old := pollInterval
	pollInterval = time.Hour
	t.Cleanup(func() { pollInterval = old })
	nodes := pgNodes(t, testkit.ScratchDB(t), 2, testPools)
	ctx := context.Background()
	for i := range 20 {
		id := fmt.Sprintf("0000000000c%03x", i)
		if _, err := nodes[0].PutMachine(ctx, "app1", &routing.Machine{ID: id, Region: "iad", Address: "10.9.0.1"}, true); err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		for {
			ms, _ := nodes[1].Machines("app1")
			if len(ms) == i+2 { // the config's machine and i+1 registered
				break
			}
			if time.Since(began) > 5*time.Second {
				t.Fatalf("change %d: the other edge has %d machines of app1 after 5 s, with the poll off", i, len(ms))
			}
			time.Sleep(time.Millisecond)
		}
	}
	if _, _, err := nodes[1].PutApp(ctx, "fresh", webApp(3000), true); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string {
		if !nodes[0].fly.HasApp("fresh") {
			return "an app created on one edge is not on the other"
		}
		return ""
	})
}

// pgNodes starts n edges (their own fly apps, stores and connection
// pools) on the PostgreSQL database of dsn.
func pgNodes(t *testing.T, dsn string, n int, pools Pools) []*App {
	t.Helper()
	var nodes []*App
	for range n {
		nodes = append(nodes, nodeOn(t, newFly(t, 3), pgStorage(t, dsn), pools))
	}
	return nodes
}

// nodeOn sets up a fly_ips app on storage with a store of its own (as a
// separate Caddy process would have).
func nodeOn(t testing.TB, fly *routing.App, st certmagic.Storage, pools Pools) *App {
	t.Helper()
	a := &App{Pools: pools}
	if err := a.setup(context.Background(), fly, st, zap.NewNop()); err != nil {
		t.Fatal(err)
	}
	stores.Delete(a.storeKey)
	s, err := openStore(context.Background(), st, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	a.store, a.storeKey = s, ""
	push := a.push
	s.onChange.Store(&push)
	a.push(nil)
	s.start()
	t.Cleanup(func() { s.Destruct() })
	return a
}

// TestPostgresOutage: while the database is unreachable, every edge
// routes what it has from memory, a change fails fast with Unavailable
// (503) and changes nothing; once the database is back, changes work
// and both edges agree on every acknowledged change.
func TestPostgresOutage(t *testing.T) {
	dsn := testkit.ScratchDB(t)
	proxy := testkit.NewCuttableProxy(t, testkit.PostgresAddr)
	dsn = strings.Replace(dsn, testkit.PostgresAddr, proxy.Addr(), 1)
	nodes := pgNodes(t, dsn, 2, testPools)
	ctx := context.Background()
	v4, _, err := nodes[0].Allocate(ctx, "app1", TypeV4)
	if err != nil {
		t.Fatal(err)
	}
	m := &routing.Machine{ID: "0000000000d001", Region: "iad", Address: "10.8.0.1"}
	if _, err := nodes[0].PutMachine(ctx, "app1", m, true); err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr(v4.Address)
	eventually(t, func() string {
		if appAt(nodes[1], addr, "") != "app1" {
			return "the other edge does not route the address yet"
		}
		if rt, err := nodes[1].fly.AppRoute("app1", 443); err != nil || rt.MachineIndex(m.ID) < 0 {
			return "the other edge does not have the machine yet"
		}
		return ""
	})

	proxy.Cut()
	for i, node := range nodes {
		began := time.Now()
		_, _, err := node.Allocate(ctx, "app2", TypeV4)
		if !errors.Is(err, ErrUnavailable) || statusOf(err) != 503 {
			t.Errorf("edge %d: a change during the outage: %v (status %d), want 503", i, err, statusOf(err))
		}
		if d := time.Since(began); d > 15*time.Second {
			t.Errorf("edge %d: the refusal took %v", i, d)
		} else {
			t.Logf("edge %d: refused in %v", i, d.Round(time.Millisecond))
		}
		if _, err := node.PutMachine(ctx, "app1", &routing.Machine{ID: "0000000000d002", Region: "iad", Address: "10.8.0.2"}, true); !errors.Is(err, ErrUnavailable) {
			t.Errorf("edge %d: a machine during the outage: %v", i, err)
		}
		// memory still routes everything, and holds nothing unstored
		if got := appAt(node, addr, ""); got != "app1" {
			t.Errorf("edge %d: during the outage %s routes to %q", i, addr, got)
		}
		if rt, err := node.fly.AppRoute("app1", 443); err != nil || rt.MachineIndex(m.ID) < 0 || rt.MachineIndex("0000000000d002") >= 0 {
			t.Errorf("edge %d: app1's machines during the outage: %v", i, err)
		}
		if ips, _ := node.IPs("app2"); len(ips) != 0 {
			t.Errorf("edge %d: an unstored allocation is in memory: %v", i, ips)
		}
	}

	proxy.Restore()
	// a lock taken as the connection was cut (the server took it, its
	// answer was lost) holds until its lease ends: until then a change
	// is refused with 503 after the storage's timeout, nothing changed
	var after Assignment
	for deadline := time.Now().Add(30 * time.Second); ; {
		var err error
		after, _, err = nodes[1].Allocate(ctx, "app2", TypeV4)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("after the outage: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	eventually(t, func() string {
		for i, node := range nodes {
			all, _ := node.IPs("")
			if len(all) != 2 {
				return fmt.Sprintf("edge %d has %d assignments, want 2", i, len(all))
			}
			if appAt(node, netip.MustParseAddr(after.Address), "") != "app2" {
				return fmt.Sprintf("edge %d does not route app2's address", i)
			}
		}
		return ""
	})
}

// TestLastAddressRace: two edges racing for the last free address of a
// pool: exactly one gets it.
func TestLastAddressRace(t *testing.T) {
	nodes := pgNodes(t, testkit.ScratchDB(t), 2, Pools{V4: []string{"127.30.0.1"}})
	var wg sync.WaitGroup
	results := make([]error, 2)
	for i, node := range nodes {
		wg.Go(func() {
			_, _, results[i] = node.Allocate(context.Background(), fmt.Sprintf("app%d", i), TypeV4)
		})
	}
	wg.Wait()
	won := 0
	for i, err := range results {
		switch {
		case err == nil:
			won++
		case statusOf(err) != 409:
			t.Errorf("edge %d: %v, want a success or 409", i, err)
		}
	}
	if won != 1 {
		t.Errorf("%d edges got the last address: %v", won, results)
	}
}

// failingStorage is a file storage whose Store fails while failing is
// set: the lock is taken, the write is not.
type failingStorage struct {
	*certmagic.FileStorage
	failing atomic.Bool
}

func (f *failingStorage) Store(ctx context.Context, key string, value []byte) error {
	if f.failing.Load() {
		return errors.New("disk full")
	}
	return f.FileStorage.Store(ctx, key, value)
}

// TestUnstoredChangeUndone: a change whose write fails is answered 503
// and leaves nothing in memory or in routing.
func TestUnstoredChangeUndone(t *testing.T) {
	st := &failingStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	a := nodeOn(t, newFly(t, 3), st, testPools)
	ctx := context.Background()
	kept, _, err := a.Allocate(ctx, "app0", TypeV4)
	if err != nil {
		t.Fatal(err)
	}
	st.failing.Store(true)
	if _, _, err := a.Allocate(ctx, "app1", TypeV4); statusOf(err) != 503 || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("an allocation whose write fails: %v", err)
	}
	if err := a.Release(ctx, "app0", kept.Address); statusOf(err) != 503 {
		t.Fatalf("a release whose write fails: %v", err)
	}
	if ips, _ := a.IPs(""); len(ips) != 1 || ips[0].App != "app0" {
		t.Errorf("after the failed writes memory holds %v", ips)
	}
	if got := appAt(a, netip.MustParseAddr(kept.Address), ""); got != "app0" {
		t.Errorf("the address whose release failed routes to %q", got)
	}
	st.failing.Store(false)
	next, _, err := a.Allocate(ctx, "app1", TypeV4)
	if err != nil || next.Address == kept.Address {
		t.Errorf("after the storage recovers: %+v, %v", next, err)
	}
}

// TestUnstoredCreateUndone: creating an app whose write fails is
// answered 503 and leaves memory as it was: the app is not there, takes
// no machine (which would be stored for an app that is not) and holds no
// automatic address.
func TestUnstoredCreateUndone(t *testing.T) {
	dir := t.TempDir()
	st := &failingStorage{FileStorage: &certmagic.FileStorage{Path: dir}}
	a := nodeOn(t, newFly(t, 2), st, testPools)
	ctx := context.Background()
	st.failing.Store(true)
	if _, _, err := a.PutApp(ctx, "fresh", webApp(3000), true); statusOf(err) != 503 {
		t.Fatalf("creating an app whose write fails: %v (status %d), want 503", err, statusOf(err))
	}
	if _, _, err := a.GetApp("fresh"); statusOf(err) != 404 {
		t.Errorf("after the 503, GET: %v, want 404", err)
	}
	if a.fly.HasApp("fresh") {
		t.Error("after the 503 routing has the app")
	}
	if _, err := a.PutMachine(ctx, "fresh", &routing.Machine{ID: "0000000000ee01", Region: "iad", Address: "10.7.0.1"}, true); statusOf(err) != 404 {
		t.Errorf("after the 503, a machine for the app: %v, want 404", err)
	}
	if ips, err := a.IPs(""); err != nil || len(ips) != 0 {
		t.Errorf("after the 503 memory holds the addresses %v (%v)", ips, err)
	}
	a.store.read(func(st *state) {
		for k := range st.records {
			t.Errorf("after the 503 memory holds the record %s", k)
		}
	})
	st.failing.Store(false)
	if _, created, err := a.PutApp(ctx, "fresh", webApp(3000), true); err != nil || !created {
		t.Fatalf("once the storage recovers: %v, %v", created, err)
	}
	if ips, _ := a.IPs("fresh"); len(ips) != 2 || ips[0].Address != "127.20.0.1" || ips[1].Address != "fd00:fe::1" {
		t.Errorf("the app's automatic addresses once the storage recovers: %v", ips)
	}
}

// TestUnstoredCreateOnPostgres: two edges on PostgreSQL, whose database
// refuses the entry that creates an app (a trigger raises): the edge
// that took the request answers 503 and neither edge has the app, then
// or after later changes; the two agree.
func TestUnstoredCreateOnPostgres(t *testing.T) {
	dsn := testkit.ScratchDB(t)
	nodes := pgNodes(t, dsn, 2, testPools)
	ctx := context.Background()
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(ctx)
	if _, err := db.Exec(ctx, `CREATE FUNCTION refuse_fresh() RETURNS trigger AS $$
		BEGIN
			IF NEW.key LIKE 'fly/state/log/%' AND position('"app/fresh"' in convert_from(NEW.value, 'UTF8')) > 0 THEN
				RAISE EXCEPTION 'no room for app fresh';
			END IF;
			RETURN NEW;
		END $$ LANGUAGE plpgsql;
		CREATE TRIGGER refuse_fresh BEFORE INSERT OR UPDATE ON flyedge_storage FOR EACH ROW EXECUTE FUNCTION refuse_fresh()`); err != nil {
		t.Fatal(err)
	}
	if _, _, err := nodes[0].PutApp(ctx, "fresh", webApp(3000), true); statusOf(err) != 503 || !strings.Contains(err.Error(), "no room for app fresh") {
		t.Fatalf("creating an app whose entry the database refuses: %v (status %d), want 503", err, statusOf(err))
	}
	if _, err := nodes[0].PutMachine(ctx, "fresh", &routing.Machine{ID: "0000000000ee02", Region: "iad", Address: "10.7.0.2"}, true); statusOf(err) != 404 {
		t.Errorf("a machine for the app that was not created: %v, want 404", err)
	}
	if _, _, err := nodes[1].Allocate(ctx, "app1", TypeV4); err != nil { // a later change, from the other edge
		t.Fatal(err)
	}
	eventually(t, func() string {
		for i, node := range nodes {
			if _, _, err := node.GetApp("fresh"); statusOf(err) != 404 {
				return fmt.Sprintf("edge %d has the app whose creation failed", i)
			}
			if node.fly.HasApp("fresh") {
				return fmt.Sprintf("edge %d routes the app whose creation failed", i)
			}
			if all, _ := node.IPs(""); len(all) != 1 {
				return fmt.Sprintf("edge %d holds %d addresses, want the other edge's one allocation", i, len(all))
			}
		}
		return ""
	})
}

// TestPushMachineMoved: a machine another edge moved from one app to
// another between two reads of the store reaches routing under its new
// app whatever order the two apps are pushed in (a push of the app that
// claims it first found it still taken, left it out and only logged).
func TestPushMachineMoved(t *testing.T) {
	ctx := context.Background()
	a := newNode(t, newFly(t, 2), t.TempDir(), testPools)
	m := &routing.Machine{ID: "0000000000aa01", Region: "iad", Address: "127.0.0.1"}
	if _, err := a.PutMachine(ctx, "app0", m, true); err != nil {
		t.Fatal(err)
	}
	from, to := "app0", "app1"
	for i := range 40 {
		// what another edge's two changes leave in the store, read at once
		a.store.mu.Lock()
		delete(a.store.st.apps[from].machines, m.ID)
		a.store.st.app(to).machines[m.ID] = m
		a.store.mu.Unlock()
		a.push(map[string]bool{from: true, to: true})
		ms, err := a.fly.Machines(to)
		if err != nil || !slices.ContainsFunc(ms, func(o *routing.Machine) bool { return o.ID == m.ID }) {
			t.Fatalf("move %d: machine %s is not in routing under %s: %v", i, m.ID, to, err)
		}
		from, to = to, from
	}
}
