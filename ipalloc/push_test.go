package ipalloc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/pgstore"
	"github.com/flyedge/caddy-flyedge/routing"
)

// pgStorage returns a caddy.storage.postgres storage in a database of the
// test's own (dropped at the end), as one edge process would open it.
func pgStorage(t *testing.T, dsn string) certmagic.Storage {
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

func testDSN(t *testing.T) string {
	t.Helper()
	const addr = "127.0.0.1:5432"
	if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL is not running at %s: %v", addr, err)
		}
		t.Skipf("PostgreSQL is not running at %s: %v", addr, err)
	} else {
		c.Close()
	}
	var b [6]byte
	rand.Read(b[:])
	name := "flyedge_ipalloc_" + hex.EncodeToString(b[:])
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, "postgres://postgres@"+addr+"/postgres?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if admin, err := pgx.Connect(ctx, "postgres://postgres@"+addr+"/postgres?sslmode=disable"); err == nil {
			admin.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)")
			admin.Close(ctx)
		}
	})
	return "postgres://postgres@" + addr + "/" + name + "?sslmode=disable"
}

// TestPushOnPostgres: on caddy.storage.postgres an edge learns of
// another's change by PostgreSQL's notification, not by the poll (which
// this test turns off).
func TestPushOnPostgres(t *testing.T) {
	old := pollInterval
	pollInterval = time.Hour
	t.Cleanup(func() { pollInterval = old })
	dsn := testDSN(t)
	var nodes []*App
	for range 2 {
		fly := newFly(t, 3)
		a := &App{Pools: testPools}
		st := pgStorage(t, dsn) // a pool of its own per edge
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
		s.start()
		t.Cleanup(func() { s.Destruct() })
		nodes = append(nodes, a)
	}
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
