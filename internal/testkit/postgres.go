package testkit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresAddr is the PostgreSQL server the tests use: the machine's
// own, user postgres with trust authentication.
const PostgresAddr = "127.0.0.1:5432"

// RequirePostgres skips the test when nothing answers at PostgresAddr,
// or fails it under CI=true, where every test must run.
func RequirePostgres(t testing.TB) {
	t.Helper()
	c, err := net.DialTimeout("tcp", PostgresAddr, 2*time.Second)
	if err != nil {
		msg := fmt.Sprintf("PostgreSQL is not running at %s (start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start): %v", PostgresAddr, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	c.Close()
}

// ScratchDB creates a database and a role that owns it, both of the
// test's own (flyedge_test_<pid>_<random>), and returns a DSN that logs
// in as that role. Both are dropped when the test ends, open sessions
// and all. Without a server it skips the test, or fails it under CI=true
// (RequirePostgres).
func ScratchDB(t testing.TB) string {
	t.Helper()
	RequirePostgres(t)
	var b [6]byte
	rand.Read(b[:])
	name := fmt.Sprintf("flyedge_test_%d_%s", os.Getpid(), hex.EncodeToString(b[:]))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, superuserDSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE ROLE "+name+" LOGIN"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { drop(t, name) })
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name+" OWNER "+name); err != nil {
		t.Fatal(err)
	}
	return "postgres://" + name + "@" + PostgresAddr + "/" + name + "?sslmode=disable"
}

// drop removes a scratch database and its role.
func drop(t testing.TB, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := pgx.Connect(ctx, superuserDSN("postgres"))
	if err != nil {
		t.Logf("dropping the scratch database %s: %v", name, err)
		return
	}
	defer admin.Close(ctx)
	for _, sql := range []string{"DROP DATABASE IF EXISTS " + name + " WITH (FORCE)", "DROP ROLE IF EXISTS " + name} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Logf("%s: %v", sql, err)
		}
	}
}

func superuserDSN(db string) string {
	return "postgres://postgres@" + PostgresAddr + "/" + db + "?sslmode=disable"
}
