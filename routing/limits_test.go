package routing

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// limitedApp is an app with two machines in iad and one in ord, and the
// given concurrency limits, whose queue waits queueTimeout.
func limitedApp(t *testing.T, soft, hard int, queueTimeout time.Duration) *Route {
	t.Helper()
	a := &App{
		Region:       "iad",
		BaseDomain:   "edge.test",
		QueueTimeout: caddy.Duration(queueTimeout),
		Apps: map[string]*Application{
			"web": {
				Services: []*Service{{
					InternalPort: 8080,
					Ports:        []*Port{{Port: 443, Handlers: []string{"tls", "http"}}},
					Concurrency:  &Concurrency{Type: "requests", SoftLimit: soft, HardLimit: hard},
				}},
				Machines: []*Machine{
					{ID: "000000000000a1", Region: "iad", Address: "10.9.0.1"},
					{ID: "000000000000a2", Region: "iad", Address: "10.9.0.2"},
					{ID: "000000000000b1", Region: "ord", Address: "10.9.1.1"},
				},
			},
		},
	}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	rt, err := routeFor(a, "web.edge.test", 443)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// TestAcquireNeverAboveHardLimit has many goroutines take and give back
// units at once; no machine may ever hold more than the hard limit, and
// everything must be given back.
func TestAcquireNeverAboveHardLimit(t *testing.T) {
	const hard = 4
	rt := limitedApp(t, 2, hard, 5*time.Second)
	var peak [3]atomic.Int64
	var held [3]atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for range 200 {
				i, outcome := Acquire(context.Background(), rt, pool{}, Preference{})
				if i < 0 {
					t.Errorf("Acquire: no machine (%d)", outcome)
					return
				}
				n := max(held[i].Add(1), int64(rt.Load(i)))
				for {
					p := peak[i].Load()
					if n <= p || peak[i].CompareAndSwap(p, n) {
						break
					}
				}
				time.Sleep(20 * time.Microsecond) // hold it while others try
				held[i].Add(-1)
				rt.Release(i)
			}
		})
	}
	wg.Wait()
	for i := range 3 {
		if p := peak[i].Load(); p > hard {
			t.Errorf("machine %s held %d at once; hard limit %d", rt.MachineID(i), p, hard)
		}
		if l := rt.Load(i); l != 0 {
			t.Errorf("machine %s: load %d after everything was given back", rt.MachineID(i), l)
		}
	}
}

// TestAcquireSoftLimitSpills fills the iad machines to their soft limit:
// the next unit goes to ord; when ord is at its soft limit too, to the
// nearest (iad) again, up to the hard limit.
func TestAcquireSoftLimitSpills(t *testing.T) {
	rt := limitedApp(t, 2, 3, time.Second)
	got := map[string]int{}
	for range 6 {
		i, _ := Acquire(context.Background(), rt, pool{}, Preference{})
		got[rt.MachineRegion(i)]++
	}
	if got["iad"] != 4 || got["ord"] != 2 {
		t.Fatalf("6 units with soft limit 2: want 4 in iad then 2 in ord, got %v", got)
	}
	for range 3 {
		i, _ := Acquire(context.Background(), rt, pool{}, Preference{})
		got[rt.MachineRegion(i)]++
	}
	if got["iad"] != 6 || got["ord"] != 3 {
		t.Fatalf("over every soft limit: want the hard limits filled, iad first, got %v", got)
	}
}

// TestAcquireQueue fills every machine to its hard limit: the next
// Acquire waits, gets the first unit given back, and when nothing is
// given back fails with AtHardLimit after the queue timeout.
func TestAcquireQueue(t *testing.T) {
	rt := limitedApp(t, 0, 1, 300*time.Millisecond)
	var taken []int
	for range 3 {
		i, _ := Acquire(context.Background(), rt, pool{}, Preference{})
		taken = append(taken, i)
	}
	start := time.Now()
	i, outcome := Acquire(context.Background(), rt, pool{}, Preference{})
	if i >= 0 || outcome != AtHardLimit {
		t.Fatalf("every machine at its hard limit: want AtHardLimit, got machine %d (%d)", i, outcome)
	}
	if waited := time.Since(start); waited < 250*time.Millisecond {
		t.Fatalf("gave up after %s; want the queue timeout (300ms)", waited)
	}

	done := make(chan int)
	go func() {
		i, _ := Acquire(context.Background(), rt, pool{}, Preference{})
		done <- i
	}()
	for deadline := time.Now().Add(5 * time.Second); rt.queue.waiting.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the fourth Acquire is not in the queue after 5 s")
		}
	}
	rt.Release(taken[2])
	select {
	case i := <-done:
		if i != taken[2] {
			t.Fatalf("the waiter got machine %d; want %d, the one given back", i, taken[2])
		}
	case <-time.After(time.Second):
		t.Fatal("the waiter was not given the unit released")
	}

	// machines that are down are not waited for
	i, outcome = Acquire(context.Background(), rt, pool{down: map[int]bool{0: true, 1: true, 2: true}}, Preference{})
	if i >= 0 || outcome != NoneAvailable {
		t.Fatalf("every machine down: want NoneAvailable at once, got %d (%d)", i, outcome)
	}
}

// BenchmarkChooseFor measures what concurrency limits add to choosing a
// machine for an HTTP request: the choice, the slot taken and, at the
// request's end (its context cancelled, as net/http does), given back.
func BenchmarkChooseFor(b *testing.B) {
	for _, limits := range []bool{false, true} {
		b.Run(map[bool]string{false: "no-limits", true: "limits"}[limits], func(b *testing.B) {
			a := benchApp(b, 1)
			if limits {
				a.Apps["app0"].Services[0].Concurrency = &Concurrency{Type: "requests", SoftLimit: 1000, HardLimit: 2000}
				if err := provision(b, a); err != nil {
					b.Fatal(err)
				}
			}
			rt, err := routeFor(a, "app0.edge.test", 443)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				ctx, cancel := context.WithCancel(context.Background())
				r := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(caddyhttpVars(ctx))
				h := HoldSlots(r) // as fly_headers does
				if i, _ := chooseFor(r, rt, pool{}, Preference{}); i < 0 {
					b.Fatal("no machine")
				}
				h.Release()
				cancel()
			}
		})
	}
}

// caddyhttpVars gives ctx the request variables Caddy's HTTP server adds.
func caddyhttpVars(ctx context.Context) context.Context {
	return context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{})
}

// TestChooseForRetryKeepsNoSlot: a request chosen again (a retry, a
// failover) gives its slot back first, so with every other slot taken it
// gets its machine again at once instead of waiting for itself.
func TestChooseForRetryKeepsNoSlot(t *testing.T) {
	rt := limitedApp(t, 0, 1, 2*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := httptest.NewRequest(http.MethodGet, "/", nil).WithContext(caddyhttpVars(ctx))
	h := HoldSlots(r)
	first, _ := chooseFor(r, rt, pool{}, Preference{})
	for range 2 {
		if i, _ := Acquire(context.Background(), rt, pool{}, Preference{}); i < 0 || i == first {
			t.Fatalf("filling the other machines: got %d", i)
		}
	}
	start := time.Now()
	again, outcome := chooseFor(r, rt, pool{}, Preference{})
	if again != first || time.Since(start) > time.Second {
		t.Fatalf("retry: machine %d (%d) after %s; want %d at once", again, outcome, time.Since(start), first)
	}
	h.Release()
	if rt.Load(first) != 0 {
		t.Fatalf("machine %d: load %d after the request ended", first, rt.Load(first))
	}
}
