package flytoml

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/flyedge/caddy-flyedge/routing"
)

// corpusDir holds the real fly.toml files of ../shared/flytoml, beside
// the checkout; each names its source on its first line.
var corpusDir = filepath.Join("..", "..", "shared", "flytoml")

// corpus is what flyedge makes of each real fly.toml: flyctl takes every
// one, and so does flyedge. services are the services that serve
// something; warnings, as checkWarnings wants them, are the keys the
// edge should act on and does not (statics), a key in a place
// Fly has none, and a service that serves nothing. The keys of the
// machines and the builder are one note, not warnings.
var corpus = map[string]struct {
	services int
	warnings []string
}{
	"001-0abir-amardns.toml":     {2, nil},
	"004-0jg-sgpe-rs.toml":       {1, nil},
	"005-agrinman-tunnelto.toml": {2, nil},
	// udp, on the edge's udp_ports
	"006-SentryPeer-SentryPeer.toml": {1, nil},
	// services = []: a private database, no public services
	"008-fly-apps-postgres-ha.toml":         {0, nil},
	"010-fly-apps-live_beats.toml":          {1, nil},
	"012-00BUKU-Ration_Django_Web_App.toml": {1, []string{"012-00BUKU-Ration_Django_Web_App.toml:15: statics"}},
	// no app: named in the edge file
	"019-fly-apps-grpc-service.toml":   {1, nil},
	"021-fly-apps-cockroachdb.toml":    {1, nil},
	"024-fly-apps-hello_elixir.toml":   {1, nil},
	"031-supabase-supavisor.toml":      {2, []string{"031-supabase-supavisor.toml:55: services[1].ports[0].protocol"}},
	"040-calcom-docker-db_fly.toml":    {2, nil},
	"042-ckreiling-fly-minecraft.toml": {1, nil},
	// a udp service with internal_port = 0 serves nothing
	"044-Nyefan-infra-matrix_coturn_fly.toml": {1, []string{"044-Nyefan-infra-matrix_coturn_fly.toml:48: services[1]: no internal_port: the service serves nothing;"}},
	"047-tmm1-flyapp-mastodon.toml":           {1, []string{"047-tmm1-flyapp-mastodon.toml:37: statics"}},
	// [services.concurrency] beside [http_service]: a service of no port
	"050-Xe-x-cmd_hdrwtch_fly.toml":                              {1, []string{"050-Xe-x-cmd_hdrwtch_fly.toml:24: services: no internal_port and no ports: the service serves nothing;"}},
	"052-fly-apps-rails-machine-workers.toml":                    {1, []string{"052-fly-apps-rails-machine-workers.toml:52: statics"}},
	"053-superfly-tokenizer.toml":                                {1, nil},
	"057-nerves-hub-nerves_hub_web.toml":                         {1, nil},
	"062-mittel-labs-bibleit-server_fly.toml":                    {2, nil},
	"065-tkneeland-pickfight-relay_fly.toml":                     {1, nil},
	"066-tkneeland-pickfight-relay_fly-proxy_proto-variant.toml": {1, nil},
}

func corpusFiles(t testing.TB) []string {
	files, _ := filepath.Glob(filepath.Join(corpusDir, "*.toml"))
	if len(files) == 0 {
		t.Skipf("no fly.toml files in %s", corpusDir)
	}
	return files
}

// TestFlyTOMLCorpus: each real fly.toml parses as the corpus table says,
// into an app the edge takes.
func TestFlyTOMLCorpus(t *testing.T) {
	files := corpusFiles(t)
	if len(files) != len(corpus) {
		t.Errorf("%d files in %s, %d in the table", len(files), corpusDir, len(corpus))
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			want, ok := corpus[name]
			if !ok {
				t.Fatal("not in the table")
			}
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			ft, err := Parse(name, data, [2]int{80, 443})
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if n := len(ft.Definition.Services); n != want.services {
				t.Errorf("%d services, want %d", n, want.services)
			}
			checkWarnings(t, ft.Warnings, want.warnings)
			for _, w := range ft.Warnings {
				if strings.Contains(w.String(), "did you mean") {
					t.Errorf("a key of Fly.io got a guess: %s", w)
				}
			}
			raw, _ := json.Marshal(ft.Definition)
			if _, err := routing.ParseApp("corpus", raw); err != nil {
				t.Errorf("the app is refused: %v", err)
			}
		})
	}
}

// adaptEdge writes an edge file into dir and adapts it.
func adaptEdge(t *testing.T, dir, edge string) (map[string]any, []caddyconfig.Warning, error) {
	t.Helper()
	file := filepath.Join(dir, "edge.toml")
	if err := os.WriteFile(file, []byte(edge), 0o600); err != nil {
		t.Fatal(err)
	}
	out, warnings, err := adapter{}.Adapt([]byte(edge), map[string]any{"filename": file})
	if err != nil {
		return nil, warnings, err
	}
	var cfg map[string]any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg, warnings, nil
}

// flyEdge returns the config's fly_edge app, nil when it has none.
func flyEdge(cfg map[string]any) map[string]any {
	e, _ := cfg["apps"].(map[string]any)["fly_edge"].(map[string]any)
	return e
}

func strs(v any) []string {
	var out []string
	list, _ := v.([]any)
	for _, e := range list {
		s, _ := e.(string)
		out = append(out, s)
	}
	return out
}

// TestAdaptCorpus: one edge file naming every real fly.toml adapts, with
// an app each (019 has no app: its entry names it; 065 and 066 are one
// app in two variants: 066's entry renames it); the udp port is among
// the edge's udp_ports, not its ports.
func TestAdaptCorpus(t *testing.T) {
	files := corpusFiles(t)
	abs, _ := filepath.Abs(corpusDir)
	edge := "[edge]\nissuer = 'internal'\napps = ['" + abs + "', " +
		"{path = '" + filepath.Join(abs, "019-fly-apps-grpc-service.toml") + "', app = 'grpc-service'}, " +
		"{path = '" + filepath.Join(abs, "066-tkneeland-pickfight-relay_fly-proxy_proto-variant.toml") + "', app = 'pickfight-relay-pp'}]\n"
	cfg, warnings, err := adaptEdge(t, t.TempDir(), edge)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, w := range corpus {
		n += len(w.warnings)
	}
	if len(warnings) != n {
		t.Errorf("%d warnings, want %d: %v", len(warnings), n, warnings)
	}
	apps := cfg["apps"].(map[string]any)["fly"].(map[string]any)["apps"].(map[string]any)
	if len(apps) != len(files) || apps["grpc-service"] == nil || apps["pickfight-relay-pp"] == nil || apps["pickfight-relay"] == nil {
		t.Errorf("%d apps, want %d", len(apps), len(files))
	}
	e := flyEdge(cfg)
	if got := strs(e["udp_ports"]); !slices.Equal(got, []string{"5060"}) {
		t.Errorf("udp_ports %v, want [5060]", got)
	}
	if got := strs(e["ports"]); slices.Contains(got, "5060") || !slices.Contains(got, "443") || !slices.Contains(got, "5432") {
		t.Errorf("ports %v", got)
	}
}

// TestAdaptUDP: an app's udp ports are the edge's udp_ports (the fly_edge
// app serves udp there only), its tcp ports its ports; udp_ports in the
// edge file are taken as ports are.
func TestAdaptUDP(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "dns.toml"), []byte("app = 'dns'\n[[services]]\n  internal_port = 5353\n  protocol = 'udp'\n  [[services.ports]]\n    port = 53\n"+
		"[[services]]\n  internal_port = 5353\n  [[services.ports]]\n    port = 53\n"), 0o600)
	cfg, _, err := adaptEdge(t, dir, "[edge]\napps = 'dns.toml'\n")
	if err != nil {
		t.Fatal(err)
	}
	if e := flyEdge(cfg); !slices.Equal(strs(e["udp_ports"]), []string{"53"}) || !slices.Equal(strs(e["ports"]), []string{"53"}) {
		t.Errorf("fly_edge %v", e)
	}
	cfg, warnings, err := adaptEdge(t, dir, "[edge]\napps = 'dns.toml'\nudp_ports = [53, '5000-5001']\nports = [53]\n")
	if err != nil || len(warnings) != 0 {
		t.Fatal(err, warnings)
	}
	if e := flyEdge(cfg); !slices.Equal(strs(e["udp_ports"]), []string{"53", "5000-5001"}) {
		t.Errorf("fly_edge %v", e)
	}
}

// TestAdaptEdgeKeys: a key an edge file does not have is left out with a
// warning naming the file, the line and the key, with a guess when it is
// a near miss.
func TestAdaptEdgeKeys(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "web.toml"), []byte("app = 'web'\n[http_service]\n  internal_port = 8080\n"), 0o600)
	_, warnings, err := adaptEdge(t, dir, "[edge]\napps = 'web.toml'\nbogus_key = 1\nbase_domian = 'x'\n\n[egde]\nregion = 'iad'\n")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "edge.toml")
	want := []caddyconfig.Warning{
		{File: file, Line: 3, Message: "edge.bogus_key is not a key of [edge]; ignored"},
		{File: file, Line: 4, Message: `edge.base_domian is not a key of [edge]; ignored: did you mean "base_domain"?`},
		{File: file, Line: 6, Message: "egde is not a key of an edge file (it has an [edge] table); ignored"},
	}
	slices.SortFunc(warnings, func(a, b caddyconfig.Warning) int { return a.Line - b.Line })
	if !slices.Equal(warnings, want) {
		t.Errorf("warnings\n%v\nwant\n%v", warnings, want)
	}
}

// TestAdaptNoPorts: apps with no public services (a worker, a private
// database) adapt; when no app has a port and the edge file lists none,
// the config has no fly_edge app (it needs ports), and keeps the apps.
func TestAdaptNoPorts(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "worker.toml"), []byte("app = 'worker'\n[env]\n  QUEUE = 'jobs'\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "db.toml"), []byte("app = 'db'\nservices = []\n[mounts]\n  source = 'pg'\n  destination = '/data'\n"), 0o600)
	cfg, warnings, err := adaptEdge(t, dir, "[edge]\napps = '.'\n")
	if err != nil || len(warnings) != 0 {
		t.Fatal(err, warnings)
	}
	if e := flyEdge(cfg); e != nil {
		t.Errorf("fly_edge %v, want none", e)
	}
	if apps := cfg["apps"].(map[string]any)["fly"].(map[string]any)["apps"].(map[string]any); len(apps) != 2 {
		t.Errorf("apps %v", apps)
	}
	// with a web app beside them, the edge has its ports
	os.WriteFile(filepath.Join(dir, "web.toml"), []byte("app = 'web'\n[http_service]\n  internal_port = 8080\n"), 0o600)
	cfg, _, err = adaptEdge(t, dir, "[edge]\napps = '.'\n")
	if err != nil {
		t.Fatal(err)
	}
	if e := flyEdge(cfg); e == nil || !slices.Equal(strs(e["ports"]), []string{"80", "443"}) {
		t.Errorf("fly_edge %v", e)
	}
}

// TestAdaptAppName: a fly.toml without app (a template, a file deployed
// with fly deploy -a) takes the name its edge file entry gives; the
// entry's name wins over the file's, as -a does; without one, the error
// says how to give it.
func TestAdaptAppName(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "grpc.toml"), []byte("[[services]]\n  internal_port = 54321\n  [[services.ports]]\n    port = 443\n    handlers = ['tls']\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "web.toml"), []byte("app = 'web'\n[http_service]\n  internal_port = 8080\n"), 0o600)
	cfg, _, err := adaptEdge(t, dir, "[edge]\napps = ['.', {path = 'grpc.toml', app = 'grpc'}, {path = 'web.toml', app = 'shop'}]\n")
	if err != nil {
		t.Fatal(err)
	}
	apps := cfg["apps"].(map[string]any)["fly"].(map[string]any)["apps"].(map[string]any)
	if len(apps) != 2 || apps["grpc"] == nil || apps["shop"] == nil {
		t.Errorf("apps %v", apps)
	}
	_, _, err = adaptEdge(t, dir, "[edge]\napps = '.'\n")
	if want := `grpc.toml: app: missing: the edge needs each app's name: set app = "<name>" in the file, or name it in an edge file's [edge] apps, as fly deploy -a does: apps = [{path = "grpc.toml", app = "<name>"}]`; err == nil || !strings.HasSuffix(err.Error(), want) {
		t.Errorf("no name: %v\nwant it to end with %s", err, want)
	}
	for _, bad := range []string{"{path = 'grpc.toml'}", "{path = '*.toml', app = 'x'}", "{path = 'grpc.toml', app = 'x', region = 'iad'}", "3"} {
		if _, _, err := adaptEdge(t, dir, "[edge]\napps = ["+bad+"]\n"); err == nil || !strings.Contains(err.Error(), "edge.apps") {
			t.Errorf("apps = [%s]: %v", bad, err)
		}
	}
}
