package ipalloc

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/routing"
)

// webApp is an app definition serving tls+http on edge port 443 from
// internal port internal.
func webApp(internal int) []byte {
	return fmt.Appendf(nil, `{"services":[{"internal_port":%d,"ports":[{"port":443,"handlers":["tls","http"]}]}]}`, internal)
}

// eventually retries check until it returns "" or 2 s have passed.
func eventually(t *testing.T, check func() string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		msg := check()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAppsAsData: an app created through the API is routed at once on
// the edge that took it and soon on another edge of the same store;
// destroying it releases what it held and ends its connections.
func TestAppsAsData(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a := newNode(t, newFly(t, 2), dir, testPools)
	b := newNode(t, newFly(t, 2), dir, testPools)
	shared := netip.MustParseAddr("127.20.0.1")

	def, created, err := a.PutApp(ctx, "web", webApp(3000), true)
	if err != nil || !created {
		t.Fatalf("creating web: %v (created %v)", err, created)
	}
	if got := appAt(a, shared, "web.edge.test"); got != "web" {
		t.Fatalf("right after the 2xx, web.edge.test on the shared address routes to %q", got)
	}
	if !json.Valid(def) || !strings.Contains(string(def), `"internal_port":3000`) {
		t.Errorf("the created app reads %s", def)
	}
	ips, err := a.IPs("web")
	if err != nil || len(ips) != 2 {
		t.Fatalf("web's automatic addresses: %v, %v (want a v6 and the shared v4)", ips, err)
	}
	eventually(t, func() string {
		if got := appAt(b, shared, "web.edge.test"); got != "web" {
			return fmt.Sprintf("the other edge routes web.edge.test to %q", got)
		}
		return ""
	})
	if list := b.Apps(); len(list) != 3 || list[2].Name != "web" || list[2].Source != routing.SourceAPI || list[0].Source != routing.SourceConfig {
		t.Errorf("the other edge lists %+v", list)
	}

	// machines, host names and addresses work for it as for any app
	m := &routing.Machine{ID: "0000000000cc01", Region: "iad", Address: "10.3.0.1"}
	if _, err := a.PutMachine(ctx, "web", m, true); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.AddCert(ctx, "web", "shop.example.com"); err != nil {
		t.Fatal(err)
	}
	v4, _, err := a.Allocate(ctx, "web", TypeV4)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.EgressIPs("web", m.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AllocateEgress(ctx, "web", m.ID); err != nil {
		t.Fatal(err)
	}

	if _, _, err := a.PutApp(ctx, "web", webApp(5000), true); statusOf(err) != 409 {
		t.Errorf("creating web twice: %v, want 409", err)
	}

	// an update replaces the definition, keeps the machines
	if _, created, err := a.PutApp(ctx, "web", webApp(4000), false); err != nil || created {
		t.Fatalf("updating web: %v (created %v)", err, created)
	}
	rt, err := a.fly.AppRoute("web", 443)
	if err != nil || rt.Service.InternalPort != 4000 || rt.NumMachines() != 1 {
		t.Fatalf("after the update web's route is %+v, %v", rt, err)
	}
	eventually(t, func() string {
		if rt, err := b.fly.AppRoute("web", 443); err != nil || rt.Service.InternalPort != 4000 || rt.NumMachines() != 1 {
			return fmt.Sprintf("the other edge's route: %v", err)
		}
		return ""
	})
	rtB, _ := b.fly.AppRoute("web", 443)

	if err := a.DestroyApp(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rt.Destroyed():
	default:
		t.Error("the route of the destroyed app is not told (its connections stay open)")
	}
	if a.fly.HasApp("web") || appAt(a, shared, "web.edge.test") != "" || appAt(a, netip.MustParseAddr(v4.Address), "") != "" {
		t.Error("the destroyed app still routes")
	}
	if _, err := a.IPs("web"); statusOf(err) != 404 {
		t.Errorf("the destroyed app's addresses: %v, want 404", err)
	}
	if all, _ := a.IPs(""); len(all) != 0 {
		t.Errorf("addresses left after destroying web: %v", all)
	}
	if owner := a.fly.HostApp("shop.example.com"); owner != "" {
		t.Errorf("shop.example.com still answers for %q", owner)
	}
	eventually(t, func() string {
		select {
		case <-rtB.Destroyed():
		default:
			return "the other edge's connections to web stay open"
		}
		if b.fly.HasApp("web") {
			return "the other edge still has web"
		}
		return ""
	})
	if err := a.DestroyApp(ctx, "web"); statusOf(err) != 404 {
		t.Errorf("destroying it again: %v, want 404", err)
	}

	// created again, it starts afresh
	if _, created, err := a.PutApp(ctx, "web", webApp(3000), true); err != nil || !created {
		t.Fatalf("creating web again: %v (created %v)", err, created)
	}
	if rt, _ := a.fly.AppRoute("web", 443); rt == nil || rt.NumMachines() != 0 || isClosed(rt.Destroyed()) {
		t.Errorf("the new web has %v", rt)
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// TestPutAppRefusals: bad definitions are 400 naming the field; the
// config's apps and their names are 409.
func TestPutAppRefusals(t *testing.T) {
	ctx := context.Background()
	a := newNode(t, newFly(t, 2), t.TempDir(), testPools)
	for _, tc := range []struct {
		name, app, body string
		status          int
		want            string
	}{
		{"config app", "app0", string(webApp(3000)), 409, "defined in the config"},
		{"bad name", "Web_1", string(webApp(3000)), 400, "name"},
		{"no internal port", "web", `{"services":[{"ports":[{"port":443}]}]}`, 400, "apps.web.services[0].internal_port"},
		{"bad handler", "web", `{"services":[{"internal_port":80,"ports":[{"port":443,"handlers":["tcp"]}]}]}`, 400, "apps.web.services[0].ports[0].handlers"},
		{"force_https without http", "web", `{"services":[{"internal_port":80,"ports":[{"port":443,"handlers":["tls"],"force_https":true}]}]}`, 400, "force_https"},
		{"unknown field", "web", `{"services":[],"colour":"red"}`, 400, "colour"},
		{"machines", "web", `{"machines":[{"id":"0000000000dd01","region":"iad","address":"10.0.0.1"}]}`, 400, "/fly/apps/web/machines"},
		{"hostnames", "web", `{"hostnames":["shop.example.com"]}`, 400, "certs"},
		{"not JSON", "web", `services: []`, 400, "invalid character"},
		{"two values", "web", `{} {}`, 400, "more follows"},
		{"null service", "web", `{"services":[null]}`, 400, "apps.web.services[0]: null"},
		{"null port", "web", `{"services":[{"internal_port":80,"ports":[{"port":80},null]}]}`, 400, "apps.web.services[0].ports[1]: null"},
		{"null check", "web", `{"services":[{"internal_port":80,"ports":[{"port":80}],"checks":[null]}]}`, 400, "apps.web.services[0].checks[0]: null"},
		// a body is exactly one JSON object, its keys exact and once each
		{"trailing brace", "web", string(webApp(3000)) + `}`, 400, "more follows"},
		{"trailing bracket", "web", string(webApp(3000)) + ` ]`, 400, "more follows"},
		{"null body", "web", `null`, 400, "apps.web: null (want an object)"},
		{"a list", "web", `[]`, 400, "apps.web: a list (want an object)"},
		{"key in another case", "web", `{"services":[{"internal_port":80,"ports":[{"port":443}]}],"Services":[]}`, 400,
			`apps.web: unknown field "Services" (field names are case-sensitive: did you mean "services"?)`},
		{"nested key in another case", "web", `{"services":[{"internal_port":80,"ports":[{"Port":443}]}]}`, 400,
			`apps.web.services[0].ports[0]: unknown field "Port"`},
		{"duplicate key", "web", `{"services":[{"internal_port":80,"ports":[{"port":443}]}],"services":[]}`, 400, `apps.web: field "services" appears twice`},
		{"nested duplicate key", "web", `{"services":[{"internal_port":80,"internal_port":81,"ports":[{"port":443}]}]}`, 400, `apps.web.services[0]: field "internal_port" appears twice`},
		{"null field", "web", `{"services":null}`, 400, "apps.web.services: null"},
		{"truncated", "web", `{"services":[`, 400, "unexpected EOF"},
		{"deep", "web", `{"services":[{"internal_port":80,"ports":[{"port":443}],"http_options":{"response":{"headers":{"X-A":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}}}}]}`, 400, "nested deeper than"},
		{"org too long", "web", `{"org":"` + strings.Repeat("o", 64) + `"}`, 400, "apps.web.org: 64 bytes"},
		{"org with NUL", "web", `{"org":"acme\u0000"}`, 400, `apps.web.org: "acme\x00"`},
		{"tls_options without tls", "web", `{"services":[{"internal_port":80,"ports":[{"port":443,"handlers":["http"],"tls_options":{"alpn":["h2"]}}]}]}`, 400,
			"apps.web.services[0].ports[0].tls_options: port 443 has handlers [http]; tls_options needs the tls handler"},
		{"proxy_proto_options without proxy_proto", "web", `{"services":[{"internal_port":80,"ports":[{"port":443,"handlers":["tls"],"proxy_proto_options":{"version":"v2"}}]}]}`, 400,
			"apps.web.services[0].ports[0].proxy_proto_options: port 443 has handlers [tls]; proxy_proto_options needs the proxy_proto handler"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := a.PutApp(ctx, tc.app, []byte(tc.body), false)
			if statusOf(err) != tc.status || !strings.Contains(fmt.Sprint(err), tc.want) {
				t.Errorf("got %d %v, want %d naming %q", statusOf(err), err, tc.status, tc.want)
			}
		})
	}
	if a.fly.HasApp("web") {
		t.Error("a refused app was created")
	}
	if err := a.DestroyApp(ctx, "app1"); statusOf(err) != 409 {
		t.Errorf("destroying a config app: %v, want 409", err)
	}
	if err := a.DestroyApp(ctx, "nope"); statusOf(err) != 404 {
		t.Errorf("destroying an unknown app: %v, want 404", err)
	}
}

// TestConfigAppConflict: a config that defines an app the API created
// does not load, and says which app.
func TestConfigAppConflict(t *testing.T) {
	dir := t.TempDir()
	a := newNode(t, newFly(t, 1), dir, testPools)
	if _, _, err := a.PutApp(context.Background(), "app1", webApp(3000), true); err != nil {
		t.Fatal(err)
	}
	b := &App{Pools: testPools}
	err := b.setup(context.Background(), newFly(t, 2), &certmagic.FileStorage{Path: dir}, zap.NewNop())
	if err == nil || !strings.Contains(err.Error(), "apps: app1: created through the admin API") {
		t.Errorf("loading a config with app1: %v", err)
	}
	if b.store != nil {
		b.Cleanup()
	}
}

// TestConcurrentPuts: many PUTs to different apps and to one app, on two
// edges at once: every app is created, the contested one ends as one of
// the definitions whole (never a mix), and both edges agree on it.
func TestConcurrentPuts(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	nodes := []*App{newNode(t, newFly(t, 0), dir, testPools), newNode(t, newFly(t, 0), dir, testPools)}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for n, node := range nodes {
		for i := range 50 {
			wg.Go(func() {
				if _, _, err := node.PutApp(ctx, fmt.Sprintf("app-%d-%d", n, i), webApp(3000+i), true); err != nil {
					errs <- err
				}
			})
			wg.Go(func() {
				k := n*50 + i
				body := fmt.Appendf(nil, `{"org":"o%d","services":[{"internal_port":%d,"ports":[{"port":%d,"handlers":["http"]}]}]}`, k, 1000+k, 10000+k)
				if _, _, err := node.PutApp(ctx, "contested", body, false); err != nil {
					errs <- err
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var defs [2]string
	eventually(t, func() string {
		for n, node := range nodes {
			if got := len(node.Apps()); got != 101 {
				return fmt.Sprintf("edge %d has %d apps, want 101", n, got)
			}
			raw, _, err := node.GetApp("contested")
			if err != nil {
				return err.Error()
			}
			defs[n] = string(raw)
		}
		if defs[0] != defs[1] {
			return fmt.Sprintf("the edges disagree: %s and %s", defs[0], defs[1])
		}
		return ""
	})
	var k int
	var stored struct{ Org string }
	if err := json.Unmarshal([]byte(defs[0]), &stored); err != nil {
		t.Fatal(err)
	}
	if _, err := fmt.Sscanf(stored.Org, "o%d", &k); err != nil {
		t.Fatalf("contested reads %s", defs[0])
	}
	cfg := nodes[0].fly.AppConfig("contested")
	if s := cfg.Services[0]; s.InternalPort != 1000+k || s.Ports[0].Port != 10000+k {
		t.Errorf("contested is a mix: org o%d, internal port %d, edge port %d", k, s.InternalPort, s.Ports[0].Port)
	}
	for _, node := range nodes {
		if rt, err := node.fly.AppRoute("contested", 10000+k); err != nil || rt.Service.InternalPort != 1000+k {
			t.Errorf("routing serves another contested: %v", err)
		}
	}
}

// TestRoutingRefusalNotStored: a change that routing would not take is
// refused (4xx) inside the store's transaction and stored nowhere,
// instead of being acknowledged while the edge serves without it.
func TestRoutingRefusalNotStored(t *testing.T) {
	ctx := context.Background()
	t.Run("an app created with a machine the config now uses", func(t *testing.T) {
		dir := t.TempDir()
		a := newNode(t, newFly(t, 3), dir, testPools)
		const id = "0000000000bb01"
		if _, err := a.PutMachine(ctx, "app2", &routing.Machine{ID: id, Region: "iad", Address: "10.2.0.1"}, true); err != nil {
			t.Fatal(err)
		}
		// a reload: app2 left the config, which gives app0 a machine with
		// the ID app2 still holds
		fly := &routing.App{BaseDomain: "edge.test", Apps: map[string]*routing.Application{
			"app0": {Machines: []*routing.Machine{{ID: id, Region: "iad", Address: "10.0.0.1"}}},
			"app1": {},
		}}
		provision(t, fly)
		b := newNode(t, fly, dir, testPools)
		_, _, err := b.PutApp(ctx, "app2", webApp(3000), false)
		if statusOf(err) != 409 || !strings.Contains(err.Error(), id) {
			t.Errorf("creating app2, whose machine %s routing would leave out: %v (status %d), want 409 naming the machine", id, err, statusOf(err))
		}
		if _, _, err := b.GetApp("app2"); statusOf(err) != 404 {
			t.Errorf("after the refusal, GET: %v, want 404", err)
		}
		if err := b.RemoveMachine(ctx, "app2", id); err != nil {
			t.Fatal(err)
		}
		if _, created, err := b.PutApp(ctx, "app2", webApp(3000), false); err != nil || !created {
			t.Errorf("once the machine is deregistered: %v, %v", created, err)
		}
	})
	t.Run("a machine for an app destroyed meanwhile", func(t *testing.T) {
		st := &gatedStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
		a := nodeOn(t, newFly(t, 1), st, testPools)
		if _, _, err := a.PutApp(ctx, "web", webApp(3000), true); err != nil {
			t.Fatal(err)
		}
		gate := st.close()
		destroyed := make(chan error, 1)
		go func() { destroyed <- a.DestroyApp(ctx, "web") }()
		<-gate.entered // the destruction waits for the storage lock
		added := make(chan error, 1)
		go func() {
			_, err := a.PutMachine(ctx, "web", &routing.Machine{ID: "0000000000bb02", Region: "iad", Address: "10.2.0.2"}, true)
			added <- err
		}()
		eventually(t, func() string {
			if len(a.store.reqs) == 0 {
				return "the machine's registration never queued"
			}
			return ""
		})
		close(gate.open)
		if err := <-destroyed; err != nil {
			t.Fatal(err)
		}
		if err := <-added; statusOf(err) != 404 {
			t.Errorf("a machine for an app destroyed before the change: %v (status %d), want 404", err, statusOf(err))
		}
		if ms, err := a.Machines("web"); statusOf(err) != 404 {
			t.Errorf("the destroyed app's machines: %v, %v; want 404", ms, err)
		}
	})
}

// provision provisions a fly app for a test.
func provision(t *testing.T, fly *routing.App) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := fly.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fly.Cleanup() })
}

// gatedStorage is a file storage whose Lock, once closed, waits until
// the gate opens.
type gatedStorage struct {
	*certmagic.FileStorage
	mu   sync.Mutex
	gate *storageGate
}

type storageGate struct {
	entered chan struct{} // closed when a Lock waits
	open    chan struct{} // close to let it through
	once    sync.Once
}

func (g *gatedStorage) close() *storageGate {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gate = &storageGate{entered: make(chan struct{}), open: make(chan struct{})}
	return g.gate
}

func (g *gatedStorage) Lock(ctx context.Context, name string) error {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		gate.once.Do(func() { close(gate.entered) })
		select {
		case <-gate.open:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.FileStorage.Lock(ctx, name)
}
