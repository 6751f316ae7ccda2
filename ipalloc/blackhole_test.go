package ipalloc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
)

// adminServer serves a's admin routes on a real listener, answering
// errors in JSON with their status as Caddy's admin endpoint does.
func adminServer(t *testing.T, a *App) *httptest.Server {
	t.Helper()
	api := &adminAPI{app: a}
	mux := http.NewServeMux()
	for _, rt := range api.Routes() {
		h := rt.Handler
		mux.HandleFunc(rt.Pattern, func(w http.ResponseWriter, r *http.Request) {
			if err := h.ServeHTTP(w, r); err != nil {
				var ae caddy.APIError
				status := http.StatusInternalServerError
				if errors.As(err, &ae) {
					status = ae.HTTPStatus
				}
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(status)
				json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			}
		})
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// TestPostgresBlackhole: with PostgreSQL silent (no answer, no refusal:
// a network that drops packets) every admin change answers 503 within
// the connection timeout the DSN sets (connect_timeout=3), the time
// docs/modules/caddy.storage.postgres.md promises, plus slack: one
// change alone, changes one after the other, and changes queued behind
// one another. Once the database answers again, changes work.
func TestPostgresBlackhole(t *testing.T) {
	const timeout = 3 * time.Second
	const slack = 3 * time.Second
	dsn := testkit.ScratchDB(t)
	proxy := testkit.NewCuttableProxy(t, testkit.PostgresAddr)
	dsn = strings.Replace(dsn, testkit.PostgresAddr, proxy.Addr(), 1) + "&connect_timeout=3"
	a := pgNodes(t, dsn, 1, testPools)[0]
	srv := adminServer(t, a)
	client := &http.Client{Timeout: 20 * time.Second} // the old code hung
	post := func(path, body string) (int, string, time.Duration) {
		began := time.Now()
		resp, err := client.Post(srv.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			return 0, err.Error(), time.Since(began)
		}
		defer resp.Body.Close()
		var out map[string]any
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, fmt.Sprint(out), time.Since(began)
	}
	if status, body, _ := post("/fly/apps/app0/ips", `{"type":"v6"}`); status != http.StatusCreated {
		t.Fatalf("before the outage: %d %s", status, body)
	}

	proxy.Blackhole()
	check := func(what string, status int, body string, took time.Duration) {
		t.Helper()
		if status != http.StatusServiceUnavailable || !strings.Contains(body, "nothing changed") {
			t.Errorf("%s: %d %s, want 503", what, status, body)
		}
		if took > timeout+slack {
			t.Errorf("%s: answered after %v, want at most %v (connect_timeout %v)", what, took.Round(time.Millisecond), timeout+slack, timeout)
		} else {
			t.Logf("%s: %d after %v", what, status, took.Round(time.Millisecond))
		}
	}
	for i := range 3 {
		status, body, took := post("/fly/apps/app1/ips", `{"type":"v6"}`)
		check(fmt.Sprintf("change %d", i), status, body, took)
	}
	status, body, took := post("/fly/apps/app1/certs", `{"hostname":"shop.example.com"}`)
	check("a host name", status, body, took)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			status, body, took := post(fmt.Sprintf("/fly/apps/app%d/ips", i%3), `{"type":"v6"}`)
			check(fmt.Sprintf("concurrent change %d", i), status, body, took)
		})
		time.Sleep(500 * time.Millisecond) // queued behind one another
	}
	wg.Wait()
	if ips, _ := a.IPs("app1"); len(ips) != 0 {
		t.Errorf("an unstored change is in memory: %v", ips)
	}

	proxy.Restore()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		status, body, _ := post("/fly/apps/app2/ips", `{"type":"v6"}`)
		if status == http.StatusCreated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30 s after the outage: %d %s", status, body)
		}
	}
	// no change answered 503 was stored later
	time.Sleep(time.Second)
	for app, want := range map[string]int{"app0": 1, "app1": 0, "app2": 1} {
		if ips, _ := a.IPs(app); len(ips) != want {
			t.Errorf("after the outage %s holds %v, want %d addresses", app, ips, want)
		}
	}
	if certs, _ := a.Certs("app1"); len(certs) != 0 {
		t.Errorf("after the outage app1 holds %v", certs)
	}
}

// stuckStorage is a file storage that says its timeout, and whose Lock
// waits, ignoring its context, while stuck is open: a storage that
// answers late.
type stuckStorage struct {
	*certmagic.FileStorage
	timeout time.Duration
	stuck   chan struct{}
	locking chan struct{} // told when a Lock is stuck
}

func (s *stuckStorage) Timeout() time.Duration { return s.timeout }

func (s *stuckStorage) Lock(ctx context.Context, name string) error {
	select {
	case <-s.stuck:
	default:
		s.locking <- struct{}{}
		<-s.stuck
	}
	return s.FileStorage.Lock(ctx, name)
}

// TestLateChangeNeverRuns: a change that waited the storage's timeout
// behind a commit the storage holds up is answered 503 at its deadline
// and never runs, even when the storage answers later; the change under
// way is answered when the storage is done with it. The storage's
// Timeout is the store's.
func TestLateChangeNeverRuns(t *testing.T) {
	st := &stuckStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}, timeout: time.Second, stuck: make(chan struct{}), locking: make(chan struct{}, 1)}
	a := nodeOn(t, newFly(t, 2), st, testPools)
	if a.store.timeout != time.Second {
		t.Fatalf("the store's timeout is %v, want the storage's (1s)", a.store.timeout)
	}
	ctx := context.Background()
	first := make(chan error, 1)
	go func() { _, _, err := a.Allocate(ctx, "app0", TypeV6); first <- err }()
	<-st.locking // the first change's commit is held up
	began := time.Now()
	_, _, err := a.Allocate(ctx, "app1", TypeV6)
	took := time.Since(began)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "nothing changed") {
		t.Errorf("the change behind it: %v, want 503", err)
	}
	if took > 2*time.Second {
		t.Errorf("the change behind it answered after %v, want about 1s", took.Round(time.Millisecond))
	}
	close(st.stuck)
	<-first // its outcome depends on the late storage; it is answered
	time.Sleep(200 * time.Millisecond)
	if ips, _ := a.IPs("app1"); len(ips) != 0 {
		t.Errorf("the change answered 503 was stored: %v", ips)
	}
	if _, _, err := a.Allocate(ctx, "app1", TypeV6); err != nil {
		t.Errorf("once the storage answers: %v", err)
	}
}
