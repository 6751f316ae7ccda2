package e2e

// State: addresses as live data in a storage that several edges share
// (a folder here; PostgreSQL in store_pg_test.go), across a crash, and
// the pools and automatic addresses of fly_ips.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// noDuplicates fails the test if a dedicated address is held twice.
func noDuplicates(t *testing.T, asgs []assignment) {
	t.Helper()
	seen := map[string]string{}
	for _, a := range asgs {
		if a.Type == "shared_v4" {
			continue
		}
		if other, dup := seen[a.Address]; dup {
			t.Errorf("%s handed out twice: to %s and %s", a.Address, other, a.App)
		}
		seen[a.Address] = a.App
	}
}

// TestSharedStorage: two Caddy processes sharing one storage folder, hit
// by 50 concurrent allocations each, never hand out an address twice,
// and each sees the other's assignments within 2 s.
func TestSharedStorage(t *testing.T) { testSharedStorage(t, t.TempDir()) }

func testSharedStorage(t *testing.T, storage string) {
	nodes := []*storageNode{startStorageNode(t, storage), startStorageNode(t, storage)}
	var wg sync.WaitGroup
	var failed atomic.Int32
	start := make(chan struct{})
	for k, n := range nodes {
		for i := range 50 {
			wg.Go(func() {
				<-start
				typ := "v4"
				if i%5 == 4 {
					typ = "v6"
				}
				status, body := call(t, n.admin, http.MethodPost, fmt.Sprintf("/fly/apps/app%d/ips", k*50+i), `{"type":"`+typ+`"}`, nil)
				if status != http.StatusCreated {
					failed.Add(1)
					t.Errorf("node %d, app%d: %d %s", k, k*50+i, status, body)
				}
			})
		}
	}
	began := time.Now()
	close(start)
	wg.Wait()
	t.Logf("100 allocations on 2 nodes in %v", time.Since(began).Round(time.Millisecond))
	acked := time.Now()
	for {
		a, b := nodes[0].ips(t), nodes[1].ips(t)
		if len(a) == 100 && len(b) == 100 {
			t.Logf("both nodes saw all 100 assignments %v after the last answer", time.Since(acked).Round(time.Millisecond))
			noDuplicates(t, a)
			noDuplicates(t, b)
			break
		}
		if time.Since(acked) > 2*time.Second {
			t.Fatalf("2 s after the storm the nodes see %d and %d of 100 assignments", len(a), len(b))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// a machine registered on one node serves on the other
	if status, body := call(t, nodes[0].admin, http.MethodPost, "/fly/apps/app7/machines", `{"id":"0000000000a007","region":"fra","address":"127.0.57.70"}`, nil); status != http.StatusCreated {
		t.Fatalf("machine add: %d %s", status, body)
	}
	added := time.Now()
	for {
		var ms []map[string]string
		call(t, nodes[1].admin, http.MethodGet, "/fly/apps/app7/machines", "", &ms)
		if len(ms) == 1 && ms[0]["id"] == "0000000000a007" && ms[0]["region"] == "fra" {
			break
		}
		if time.Since(added) > 2*time.Second {
			t.Fatalf("2 s after a machine was added on node 0, node 1 has %v", ms)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCrashDuringStorm: a Caddy killed with SIGKILL in the middle of an
// allocation storm restarts with every assignment it acknowledged, and
// its state loads and takes new allocations.
func TestCrashDuringStorm(t *testing.T) { testCrashDuringStorm(t, t.TempDir()) }

func testCrashDuringStorm(t *testing.T, storage string) {
	n := startStorageNode(t, storage)
	type ack struct{ app, address string }
	acks := make(chan ack, 100000)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			app := fmt.Sprintf("app%d", i)
			for {
				req, _ := http.NewRequest(http.MethodPost, "http://"+n.admin+"/fly/apps/"+app+"/ips", strings.NewReader(`{"type":"v6"}`))
				resp, err := adminClient.Do(req)
				if err != nil {
					return // killed
				}
				var a assignment
				err = json.NewDecoder(resp.Body).Decode(&a)
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated || err != nil {
					return
				}
				acks <- ack{app, a.Address}
			}
		})
	}
	// kill it once some allocations are acknowledged and others are not
	var got []ack
	for len(got) < 300 {
		select {
		case a := <-acks:
			got = append(got, a)
		case <-time.After(20 * time.Second):
			t.Fatalf("only %d allocations acknowledged", len(got))
		}
	}
	n.proc.Process.Kill()
	n.proc.Wait()
	wg.Wait()
	close(acks)
	for a := range acks {
		got = append(got, a)
	}
	t.Logf("%d allocations acknowledged before SIGKILL", len(got))

	n2 := startStorageNode(t, storage)
	after := n2.ips(t)
	noDuplicates(t, after)
	held := map[string]string{}
	for _, a := range after {
		held[a.App+" "+a.Address] = a.Type
	}
	for _, a := range got {
		if held[a.app+" "+a.address] == "" {
			t.Errorf("acknowledged assignment %s -> %s is lost", a.address, a.app)
		}
	}
	// the state takes new changes once the dead process's lock goes
	// stale (its lease, 10 s); until then a change answers 503 after the
	// storage's timeout, and nothing changed
	var a assignment
	waitUntil(t, "the dead edge's storage lock to go stale", 30*time.Second, func() bool {
		status, body := call(t, n2.admin, http.MethodPost, "/fly/apps/app99/ips", `{"type":"shared_v4"}`, &a)
		switch status {
		case http.StatusCreated, http.StatusOK:
			return true
		case http.StatusServiceUnavailable:
			if !strings.Contains(body, "nothing changed") {
				t.Fatalf("a change refused while the lock is held: %d %s; want it to say nothing changed", status, body)
			}
			return false
		}
		t.Fatalf("allocating shared_v4 for app99: %d %s", status, body)
		return false
	})
	if a.Address != sharedV4 {
		t.Errorf("allocation after the restart gave %s", a.Address)
	}
	if addr := allocate(t, n2.admin, "app98", "v4"); addr == "" {
		t.Error("no v4 after the restart")
	}
	noDuplicates(t, n2.ips(t))
}

// TestAutoAllocation: an app with public services gets a dedicated IPv6
// address the first time it is configured, and a shared IPv4 address if
// it serves HTTP on 80 or TLS and HTTP on 443; releasing them sticks
// across reloads; with auto_allocate off nothing is allocated.
func TestAutoAllocation(t *testing.T) {
	requireCaddy(t)
	storage := t.TempDir()
	cfg := func(auto string) string {
		return fmt.Sprintf(`{
	admin %s
	persist_config off
	storage file_system %s
	fly {
		base_domain edge.test
		app site {
			service 8080 {
				port 80 http
				port 443 tls http
			}
		}
		app api {
			service 8080 {
				port 443 tls http
			}
		}
		app tcp {
			service 7000 {
				port 7000
			}
		}
		app private {
		}
		app later {
			service 8080 {
				port 80 http
			}
		}
	}
	fly_ips {
		v6 fd00:fe::/64
		shared_v4 %s
		auto_allocate %s
	}
}
`, adminAddr, storage, sharedV4, auto)
	}
	mustLoad(t, cfg("off"))
	if status, body := call(t, adminAddr, http.MethodGet, "/fly/ips", "", nil); status != 200 || body != "[]\n" {
		t.Fatalf("with auto_allocate off: %d %s", status, body)
	}
	mustLoad(t, cfg("on"))
	var got []assignment
	call(t, adminAddr, http.MethodGet, "/fly/ips", "", &got)
	types := map[string][]string{}
	for _, a := range got {
		types[a.App] = append(types[a.App], a.Type)
	}
	want := map[string][]string{"site": {"shared_v4", "v6"}, "api": {"shared_v4", "v6"}, "tcp": {"v6"}, "later": {"shared_v4", "v6"}}
	if fmt.Sprint(types) != fmt.Sprint(want) {
		t.Fatalf("automatic addresses %v, want %v", types, want)
	}
	// released addresses are not handed out again on the next load
	var v6 string
	for _, a := range got {
		if a.App == "tcp" {
			v6 = a.Address
		}
	}
	if status, _ := call(t, adminAddr, http.MethodDelete, "/fly/apps/tcp/ips/"+v6, "", nil); status != http.StatusNoContent {
		t.Fatal("release failed")
	}
	mustLoad(t, cfg("on"))
	var again []assignment
	if status, body := call(t, adminAddr, http.MethodGet, "/fly/apps/tcp/ips", "", &again); status != http.StatusOK {
		t.Fatalf("GET /fly/apps/tcp/ips: %d %s", status, body)
	}
	if len(again) != 0 {
		t.Errorf("a released automatic address came back on reload: %v", again)
	}
}

// TestBadPools: malformed or overlapping pools fail at load, naming the
// field.
func TestBadPools(t *testing.T) {
	requireCaddy(t)
	for _, tc := range []struct{ pools, want string }{
		{"v4 127.30.0.0/24 127.30.0.128/25", "v4[1] (127.30.0.129-127.30.0.254) overlaps v4[0] (127.30.0.1-127.30.0.254)"},
		{"shared_v4 127.30.0.9\n\t\tv4 127.30.0.0/24", "shared_v4[0] (127.30.0.9-127.30.0.9) overlaps v4[0]"},
		{"v6 fd00::/300", `v6[0]: "fd00::/300" is neither an address, a prefix nor a range first-last`},
		{"v6 127.0.0.0/8", `v6[0]: "127.0.0.0/8" is not IPv6`},
		{"auto_allocate maybe", `auto_allocate: "maybe" (want on or off)`},
	} {
		err := load(t, fmt.Sprintf("{\n\tadmin %s\n\tfly_ips {\n\t\t%s\n\t}\n}\n", adminAddr, tc.pools), "caddyfile")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pools %q: %v; want an error containing %q", tc.pools, err, tc.want)
		}
	}
}
