package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
)

// TestPostgresOutageStorm: two edges on PostgreSQL, a storm of changes,
// and the database unreachable in the middle of it, until every worker
// of the storm has had changes answered during the outage. Every request
// to an existing app succeeds throughout; every change during the outage
// fails fast with a 503 JSON error, never a hang and never a 2xx; when
// the database is back, and every worker has had changes taken again,
// both edges converge on every acknowledged change.
func TestPostgresOutageStorm(t *testing.T) {
	requireCaddy(t)
	dsn := testDatabase(t)
	proxy := testkit.NewCuttableProxy(t, testkit.PostgresAddr)
	viaProxy := strings.Replace(dsn, testkit.PostgresAddr, proxy.Addr(), 1)

	// edge 0: the shared Caddy, serving web and other on PostgreSQL
	edgeCount++
	domain := fmt.Sprintf("outage-%d.test", edgeCount)
	httpPort, httpsPort, machinePort, rawPort := freePort(), freePort(), freePort(), freePort()
	startMachines(t, machinePort, ipWeb, ipOther)
	cfg := fmt.Sprintf(ipEdgeConfig, adminAddr, "STORAGE", httpPort, httpsPort, machinePort, rawPort,
		ipWeb.id, ipWeb.ip, ipOther.id, ipOther.ip, ipRaw.id, ipRaw.ip, domain, ipSecure.id, ipSecure.ip)
	cfg = strings.Replace(cfg, "storage file_system STORAGE", "storage postgres "+viaProxy, 1)
	mustLoad(t, cfg)
	// edge 1: another Caddy on the same database
	node := startStorageNode(t, viaProxy)
	allocate(t, adminAddr, "web", "shared_v4")
	allocate(t, adminAddr, "other", "shared_v4")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	defer halt() // a wait that fails stops the storm before the test ends
	// the phase a request or change began in: before the outage, during
	// it, after it
	const before, during, after = 0, 1, 2
	var phase atomic.Int32
	// requests to the existing apps, all along
	var requests, failed atomic.Int64
	var served [3]atomic.Int64 // by the phase they began in
	var firstFailure atomic.Value
	shared := via(nil, sharedV4)
	for _, app := range []string{"web", "other"} {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				p := phase.Load()
				got, err := machineOf(shared, "http://"+app+"."+domain+":"+httpPort+"/")
				requests.Add(1)
				if err != nil || got == "" {
					failed.Add(1)
					firstFailure.CompareAndSwap(nil, fmt.Sprintf("%s: %q %v", app, got, err))
				} else {
					served[p].Add(1)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	// a storm of changes on both edges
	var outage atomic.Bool
	var acked sync.Map // "app address" -> true
	var refused, duringOutage atomic.Int64
	var answered [2][4][3]atomic.Int64 // by edge, worker and the phase the change began in
	var storeBack [2][4]atomic.Int64   // by edge and worker: changes begun after the outage that the store took (not a 503)
	for k, admin := range []string{node.admin, adminAddr} {
		for w := range 4 {
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					app := fmt.Sprintf("app%d", (w*25+i)%100)
					if k == 1 {
						app = "secure"
					}
					p := phase.Load()
					began := time.Now()
					var a assignment
					status, body := call(t, admin, http.MethodPost, "/fly/apps/"+app+"/ips", `{"type":"v6"}`, &a)
					took := time.Since(began)
					if outage.Load() {
						duringOutage.Add(1)
					}
					switch {
					case status == http.StatusCreated:
						acked.Store(app+" "+a.Address, true)
					case status == http.StatusServiceUnavailable:
						refused.Add(1)
						var e struct{ Error string }
						if json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, "unavailable") {
							t.Errorf("a 503 without a JSON error: %s", body)
						}
					case status == http.StatusConflict:
						// edge 0's one v6 address is taken: no change
					default:
						t.Errorf("a change answered %d %s", status, body)
					}
					if took > 10*time.Second {
						t.Errorf("a change took %v", took)
					}
					answered[k][w][p].Add(1)
					if p == after && status != http.StatusServiceUnavailable {
						storeBack[k][w].Add(1)
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
		}
	}
	// every worker answered per phase, requests served, as the waits ask
	storm := func(p int32, changes, requests int64) func() bool {
		return func() bool {
			for k := range answered {
				for w := range answered[k] {
					if answered[k][w][p].Load() < changes {
						return false
					}
				}
			}
			return served[p].Load() >= requests
		}
	}
	waitFor(t, "the storm and the requests to be under way", storm(before, 3, 10))
	// each edge's listener for changes tells when it lost the database,
	// and again each time it fails to reach it
	const lost = "listening for storage changes; trying again in 1s"
	listenerLost := func() [2]int {
		return [2]int{strings.Count(node.log.String(), lost), strings.Count(caddyLog.String(), lost)}
	}
	lostBefore := listenerLost()
	proxy.Cut()
	cut := time.Now()
	outage.Store(true)
	phase.Store(during)
	// the outage lasts until each worker of the storm has had three
	// changes answered that it began during the outage (a hang shows as
	// a change that took over 10 s, or as this wait running out), the
	// existing apps have been served through it, and each edge's
	// listener for changes has lost the database and failed to reach it
	// again
	waitUntil(t, "every worker of the storm to have three changes answered during the outage, and each edge's listener to have tried the database again", 90*time.Second, func() bool {
		n := listenerLost()
		return storm(during, 3, 20)() && n[0] >= lostBefore[0]+2 && n[1] >= lostBefore[1]+2
	})
	outage.Store(false)
	phase.Store(after)
	proxy.Restore()
	t.Logf("the database was unreachable for %v", time.Since(cut).Round(time.Millisecond))
	waitUntil(t, "every worker of the storm to have three changes taken after the outage", 60*time.Second, func() bool {
		for k := range storeBack {
			for w := range storeBack[k] {
				if storeBack[k][w].Load() < 3 {
					return false
				}
			}
		}
		return true
	})
	halt()
	t.Logf("%d requests to existing apps, %d failed; %d changes refused with 503 (%d tried during the outage)", requests.Load(), failed.Load(), refused.Load(), duringOutage.Load())
	if failed.Load() > 0 {
		t.Errorf("%d requests to existing apps failed, the first: %v", failed.Load(), firstFailure.Load())
	}
	if refused.Load() == 0 {
		t.Error("no change was refused during the outage")
	}
	// both edges converge on every acknowledged change
	var want []string
	acked.Range(func(k, _ any) bool { want = append(want, k.(string)); return true })
	waitFor(t, "both edges to hold every acknowledged assignment", func() bool {
		for _, admin := range []string{adminAddr, node.admin} {
			var ips []assignment
			if status, _ := call(t, admin, http.MethodGet, "/fly/ips", "", &ips); status != http.StatusOK {
				return false
			}
			have := map[string]bool{}
			for _, a := range ips {
				have[a.App+" "+a.Address] = true
			}
			for _, w := range want {
				if !have[w] {
					return false
				}
			}
		}
		return true
	})
	t.Logf("%d acknowledged assignments on both edges", len(want))
}

// TestSharedStorageOnPostgres: TestSharedStorage (state_test.go) with
// the storage in PostgreSQL (caddy.storage.postgres).
func TestSharedStorageOnPostgres(t *testing.T) { testSharedStorage(t, testDatabase(t)) }

// TestCrashDuringStormOnPostgres: TestCrashDuringStorm (state_test.go)
// with the storage in PostgreSQL; the killed process's lock is taken
// over after its lease.
func TestCrashDuringStormOnPostgres(t *testing.T) { testCrashDuringStorm(t, testDatabase(t)) }
