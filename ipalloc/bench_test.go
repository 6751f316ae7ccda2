package ipalloc

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
)

// seed gives each of the first n apps a dedicated IPv6 address, in one
// change, and writes a snapshot, as a long-running edge would have.
func seed(b *testing.B, a *App, n int) {
	b.Helper()
	if n == 0 {
		return
	}
	err := a.store.do(context.Background(), func(t *txn) error {
		for i := range n {
			if _, _, err := a.allocate(t, fmt.Sprintf("app%d", i), TypeV6); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkAllocate: one dedicated IPv4 allocation, durable on the file
// storage, with 0, 10,000 and 100,000 existing assignments.
func BenchmarkAllocate(b *testing.B) {
	for _, n := range []int{0, 10_000, 100_000} {
		b.Run(fmt.Sprintf("existing=%d", n), func(b *testing.B) {
			fly := newFly(b, max(n, 1))
			a := newNode(b, fly, b.TempDir(), Pools{V6: []string{"fd00:fe::/64"}, V4: []string{"10.0.0.0/8"}})
			seed(b, a, n)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, _, err := a.Allocate(ctx, "app0", TypeV4); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAllocateStorage: one dedicated IPv4 allocation with 100,000
// existing assignments, on the file storage and on PostgreSQL
// (caddy.storage.postgres, the server at 127.0.0.1:5432), with its p99.
func BenchmarkAllocateStorage(b *testing.B) {
	const n = 100_000
	for _, kind := range []string{"file", "postgres"} {
		b.Run(kind, func(b *testing.B) {
			var st certmagic.Storage = &certmagic.FileStorage{Path: b.TempDir()}
			if kind == "postgres" {
				st = pgStorage(b, testkit.ScratchDB(b))
			}
			a := nodeOn(b, newFly(b, n), st, Pools{V6: []string{"fd00:fe::/64"}, V4: []string{"10.0.0.0/8"}})
			seed(b, a, n)
			ctx := context.Background()
			var took []time.Duration
			b.ResetTimer()
			for b.Loop() {
				began := time.Now()
				if _, _, err := a.Allocate(ctx, "app0", TypeV4); err != nil {
					b.Fatal(err)
				}
				took = append(took, time.Since(began))
			}
			slices.Sort(took)
			b.ReportMetric(float64(took[len(took)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// BenchmarkLoadStorage: opening the state of 100,000 assignments (a
// snapshot plus 500 changes after it) on the file storage and on
// PostgreSQL.
func BenchmarkLoadStorage(b *testing.B) {
	const n = 100_000
	for _, kind := range []string{"file", "postgres"} {
		b.Run(kind, func(b *testing.B) {
			var st certmagic.Storage = &certmagic.FileStorage{Path: b.TempDir()}
			if kind == "postgres" {
				st = pgStorage(b, testkit.ScratchDB(b))
			}
			a := nodeOn(b, newFly(b, n), st, Pools{V6: []string{"fd00:fe::/64"}})
			seed(b, a, n)
			ctx := context.Background()
			if err := st.Lock(ctx, lockName); err != nil {
				b.Fatal(err)
			}
			if err := a.store.compact(ctx); err != nil {
				b.Fatal(err)
			}
			st.Unlock(ctx, lockName)
			for i := range 500 {
				if _, _, err := a.Allocate(ctx, fmt.Sprintf("app%d", i), TypeV6); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for b.Loop() {
				s, err := openStore(ctx, st, zap.NewNop())
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if len(s.st.records) != n+500 {
					b.Fatalf("loaded %d records, want %d", len(s.st.records), n+500)
				}
				s.Destruct()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkLoad: opening the state of 100,000 assignments (a snapshot
// plus a log of changes after it), as a starting Caddy does.
func BenchmarkLoad(b *testing.B) {
	const n = 100_000
	dir := b.TempDir()
	fly := newFly(b, n)
	a := newNode(b, fly, dir, Pools{V6: []string{"fd00:fe::/64"}})
	seed(b, a, n)
	ctx := context.Background()
	if err := a.store.storage.Lock(ctx, lockName); err != nil {
		b.Fatal(err)
	}
	if err := a.store.compact(ctx); err != nil {
		b.Fatal(err)
	}
	a.store.storage.Unlock(ctx, lockName)
	for i := range 500 { // changes since the snapshot
		if _, _, err := a.Allocate(ctx, fmt.Sprintf("app%d", i), TypeV6); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		st, err := openStore(ctx, &certmagic.FileStorage{Path: dir}, zap.NewNop())
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if len(st.st.records) != n+500 {
			b.Fatalf("loaded %d records, want %d", len(st.st.records), n+500)
		}
		st.Destruct()
		b.StartTimer()
	}
}

// BenchmarkResolve: finding the route of a connection by its
// destination address (dedicated) and by address and host name (shared),
// with 1 and 100,000 apps whose addresses the store pushed.
func BenchmarkResolve(b *testing.B) {
	for _, n := range []int{1, 100_000} {
		fly := newFly(b, n)
		a := newNode(b, fly, b.TempDir(), Pools{V6: []string{"fd00:fe::/64"}, SharedV4: []string{"127.20.0.1"}})
		err := a.store.do(context.Background(), func(t *txn) error {
			for i := range n {
				for _, typ := range []string{TypeV6, TypeSharedV4} {
					if _, _, err := a.allocate(t, fmt.Sprintf("app%d", i), typ); err != nil {
						return err
					}
				}
				if err := t.applyPuts(); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		last := fmt.Sprintf("app%d", n-1)
		var ded netip.Addr
		a.store.read(func(st *state) {
			for addr := range st.apps[last].ips {
				if addr.Is6() {
					ded = addr
				}
			}
		})
		shared := netip.MustParseAddr("127.20.0.1")
		host := last + ".edge.test"
		dedAddr := net.TCPAddrFromAddrPort(netip.AddrPortFrom(ded, 443))
		sharedAddr := net.TCPAddrFromAddrPort(netip.AddrPortFrom(shared, 443))
		b.Run(fmt.Sprintf("apps=%d/dedicated", n), func(b *testing.B) {
			for b.Loop() {
				if rt, err := a.fly.Resolve(dedAddr, ""); err != nil || rt.App != last {
					b.Fatal(rt, err)
				}
			}
		})
		b.Run(fmt.Sprintf("apps=%d/shared", n), func(b *testing.B) {
			for b.Loop() {
				if rt, err := a.fly.Resolve(sharedAddr, host); err != nil || rt.App != last {
					b.Fatal(rt, err)
				}
			}
		})
	}
}
