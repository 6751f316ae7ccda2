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
// and the database unreachable for 30 s in the middle of it. Every
// request to an existing app succeeds throughout; every change during the
// outage fails fast with a 503 JSON error, never a hang and never a 2xx;
// when the database is back both edges converge on every acknowledged
// change.
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
	// requests to the existing apps, all along
	var requests, failed atomic.Int64
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
				got, err := machineOf(shared, "http://"+app+"."+domain+":"+httpPort+"/")
				requests.Add(1)
				if err != nil || got == "" {
					failed.Add(1)
					firstFailure.CompareAndSwap(nil, fmt.Sprintf("%s: %q %v", app, got, err))
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	// a storm of changes on both edges
	var outage atomic.Bool
	var acked sync.Map // "app address" -> true
	var refused, duringOutage atomic.Int64
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
					time.Sleep(20 * time.Millisecond)
				}
			})
		}
	}
	time.Sleep(2 * time.Second)
	proxy.Cut()
	outage.Store(true)
	time.Sleep(30 * time.Second)
	outage.Store(false)
	proxy.Restore()
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
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

// TestSharedStorageOnPostgres: the same, with the storage in PostgreSQL
// (caddy.storage.postgres).
func TestSharedStorageOnPostgres(t *testing.T) { testSharedStorage(t, testDatabase(t)) }

// TestCrashDuringStormOnPostgres: the same, with the storage in
// PostgreSQL; the killed process's lock is taken over after its lease.
func TestCrashDuringStormOnPostgres(t *testing.T) { testCrashDuringStorm(t, testDatabase(t)) }
