package flytoml

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/flyedge/caddy-flyedge/routing"
)

func readTOML(t *testing.T, name string) *File {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	ft, err := Parse(name, data, [2]int{8080, 8443})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	// what comes out is an app the admin API takes
	def, err := json.Marshal(ft.Definition)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := routing.ParseApp("x", def); err != nil {
		t.Fatalf("%s gives an app the edge refuses: %v\n%s", name, err, def)
	}
	return ft
}

func TestFlyTOMLHTTPService(t *testing.T) {
	ft := readTOML(t, "web.toml")
	if ft.App != "web" || ft.PrimaryRegion != "iad" {
		t.Errorf("app %q, primary_region %q", ft.App, ft.PrimaryRegion)
	}
	s := ft.Definition.Services[0]
	if len(ft.Definition.Services) != 1 || s.InternalPort != 8080 {
		t.Fatalf("services: %+v", ft.Definition.Services)
	}
	http, https := s.Ports[0], s.Ports[1]
	if http.Port != 8080 || !slices.Equal(http.Handlers, []string{"http"}) || !http.ForceHTTPS {
		t.Errorf("Fly's port 80 became %+v (want the edge's http port 8080, http, force_https)", http)
	}
	if https.Port != 8443 || !slices.Equal(https.Handlers, []string{"tls", "http"}) || https.TLSOptions == nil ||
		!slices.Equal(https.TLSOptions.ALPN, []string{"h2", "http/1.1"}) {
		t.Errorf("Fly's port 443 became %+v", https)
	}
	if c := s.Concurrency; c == nil || c.Type != "requests" || c.SoftLimit != 200 || c.HardLimit != 250 {
		t.Errorf("concurrency %+v", c)
	}
	o := s.HTTPOptions
	if o == nil || !o.H2Backend || o.Response == nil || !o.Response.Pristine || o.Response.Headers["X-Frame-Options"] != "DENY" || o.Response.Headers["Server"] != false {
		t.Errorf("http_options %+v", o)
	}
	if len(s.Checks) != 1 || s.Checks[0].Type != "http" || s.Checks[0].Path != "/healthz" ||
		s.Checks[0].Interval != caddy.Duration(30*time.Second) || s.Checks[0].GracePeriod != caddy.Duration(10*time.Second) {
		t.Errorf("checks %+v", s.Checks)
	}
	if !slices.Equal(s.Processes, []string{"app"}) {
		t.Errorf("processes %v, want [app]", s.Processes)
	}
	// the keys of the machines and the builder are one note, not
	// warnings; the scale-to-zero keys are handed through, typed
	checkWarnings(t, ft.Warnings, nil)
	if !slices.Equal(ft.MachineKeys, []string{"build", "vm"}) {
		t.Errorf("machine keys %v", ft.MachineKeys)
	}
	if n := ft.Notes(); len(n) != 1 || n[0] != "web.toml: build, vm: read by the machines or the builder, not the edge; left to them" {
		t.Errorf("notes %q", n)
	}
	if len(ft.Scales) != 1 || ft.Scales[0] == nil {
		t.Fatalf("scales %v", ft.Scales)
	}
	if sc := ft.Scales[0]; sc.AutoStopMachines != "stop" || sc.AutoStartMachines == nil || !*sc.AutoStartMachines ||
		sc.MinMachinesRunning == nil || *sc.MinMachinesRunning != 0 || sc.MaxMachinesRunning != nil {
		t.Errorf("scale %+v", *sc)
	}
}

// checkWarnings wants exactly one warning starting with each of want.
func checkWarnings(t *testing.T, warnings []Warning, want []string) {
	t.Helper()
	var got []string
	for _, w := range warnings {
		got = append(got, w.String())
	}
	for _, w := range want {
		n := 0
		for _, g := range got {
			if strings.HasPrefix(g, w+" ") {
				n++
			}
		}
		if n != 1 {
			t.Errorf("warnings: %d naming %q in\n%s", n, w, strings.Join(got, "\n"))
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d warnings, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
}

func TestFlyTOMLServices(t *testing.T) {
	pg := readTOML(t, "postgres.toml")
	s := pg.Definition.Services[0]
	if s.InternalPort != 5432 || s.Ports[0].Port != 5432 || !slices.Equal(s.Ports[0].Handlers, []string{"pg_tls"}) || s.Concurrency.Type != "connections" {
		t.Errorf("postgres: %+v", s)
	}
	if len(s.Checks) != 1 || s.Checks[0].Type != "tcp" || s.Checks[0].Timeout != caddy.Duration(2*time.Second) {
		t.Errorf("postgres checks: %+v", s.Checks)
	}
	checkWarnings(t, pg.Warnings, nil)
	if !slices.Equal(pg.MachineKeys, []string{"env", "services.tcp_checks.restart_limit"}) {
		t.Errorf("machine keys %v", pg.MachineKeys)
	}
	if sc := pg.Scales[0]; sc == nil || sc.AutoStartMachines == nil || *sc.AutoStartMachines || sc.AutoStopMachines != "" {
		t.Errorf("scale %+v", sc)
	}

	mail := readTOML(t, "proxyproto.toml")
	ps := mail.Definition.Services[0].Ports
	if len(ps) != 2 || ps[0].Port != 25 || ps[0].ProxyProtoOptions.Version != "v2" || ps[1].TLSOptions == nil || ps[1].TLSOptions.ALPN[0] != "smtp" {
		t.Errorf("proxy_proto: %+v %+v", ps[0], ps[1])
	}
	checkWarnings(t, mail.Warnings, nil)

	game := readTOML(t, "range.toml")
	ps = game.Definition.Services[0].Ports
	if len(ps) != 10 || ps[0].Port != 10000 || ps[9].Port != 10009 || len(ps[3].Handlers) != 0 {
		t.Errorf("range 10000-10009 gave %d ports, first %d", len(ps), ps[0].Port)
	}
	c := game.Definition.Services[0].Checks
	if len(c) != 1 || c[0].Interval != caddy.Duration(10*time.Second) || c[0].Timeout != caddy.Duration(2*time.Second) {
		t.Errorf("milliseconds: %+v", c)
	}
	checkWarnings(t, game.Warnings, nil) // tls_skip_verify = false and empty headers, as flyctl writes them

	legacy := readTOML(t, "ignored.toml")
	ps = legacy.Definition.Services[0].Ports
	if len(ps) != 2 || ps[0].Port != 8080 || !ps[0].ForceHTTPS || ps[1].Port != 8443 {
		t.Errorf("quoted ports: %+v %+v", ps[0], ps[1])
	}
	if got := legacy.Definition.Services[0].Processes; !slices.Equal(got, []string{"app"}) { // processes = [] is no groups
		t.Errorf("processes: %v, want [app]", got)
	}
	checkWarnings(t, legacy.Warnings, []string{"ignored.toml:17: statics"})
	if want := []string{"env", "experimental", "kill_signal", "kill_timeout", "mounts", "services.script_checks", "services.tcp_checks.restart_limit"}; !slices.Equal(legacy.MachineKeys, want) {
		t.Errorf("machine keys %v, want %v", legacy.MachineKeys, want)
	}
}

// TestFlyTOMLErrors: what Fly.io refuses is an error with the file, the
// key and the line.
func TestFlyTOMLErrors(t *testing.T) {
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"force_https without http", "app = 'a'\n[[services]]\ninternal_port = 80\n[[services.ports]]\nport = 443\nhandlers = ['tls']\nforce_https = true\n",
			"fly.toml:7: services[0].ports[0].force_https: needs the http handler"},
		{"port above 65535", "app = 'a'\n[[services]]\ninternal_port = 80\n\n[[services.ports]]\nport = 70000\n",
			"fly.toml:6: services[0].ports[0].port: 70000 is not a port number (1-65535)"},
		{"port 0 in a second port", "[[services]]\ninternal_port = 80\n[[services.ports]]\nport = 80\n[[services.ports]]\nport = 0\n",
			"fly.toml:6: services[0].ports[1].port: 0 is not a port number"},
		{"internal port", "[http_service]\ninternal_port = 99999\n", "fly.toml:2: http_service.internal_port: 99999 is not a port number"},
		{"unknown handler", "[[services]]\ninternal_port = 80\n[[services.ports]]\nport = 80\nhandlers = ['gopher']\n", "fly.toml:5: services[0].ports[0].handlers: "},
		{"sctp", "[[services]]\ninternal_port = 53\nprotocol = 'sctp'\n[[services.ports]]\nport = 53\n", "fly.toml:3: services[0].protocol: \"sctp\" (want tcp or udp)"},
		{"bad duration", "[[services]]\ninternal_port = 80\n[[services.ports]]\nport = 80\n[[services.tcp_checks]]\ninterval = 'soon'\n", "fly.toml:6: services[0].tcp_checks[0].interval: soon"},
		{"proxy proto version", "[[services]]\ninternal_port = 80\n[[services.ports]]\nport = 80\nhandlers = ['proxy_proto']\nproxy_proto_options = { version = 'v3' }\n", "fly.toml:6: services[0].ports[0].proxy_proto_options.version"},
		{"range backwards", "[[services]]\ninternal_port = 80\n[[services.ports]]\nstart_port = 20\nend_port = 10\n", "fly.toml:5: services[0].ports[0].end_port: 10 is below start_port 20"},
		{"syntax", "app = 'a'\n[[services]\n", "fly.toml:2"},
		{"a string for a number", "[http_service]\ninternal_port = 'eighty'\n", "fly.toml:2: http_service.internal_port: eighty: want a number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("fly.toml", []byte(tc.doc), [2]int{80, 443})
			var te *Error
			if !errors.As(err, &te) || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("got %v, want it to start with %q", err, tc.want)
			}
		})
	}
}

// FuzzParse: any bytes give an app the edge takes, or an error;
// never a panic. Seeded with testdata and the real fly.toml files of
// ../shared/flytoml (corpusDir), read at test time.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.toml"))
	real, _ := filepath.Glob(filepath.Join(corpusDir, "*.toml"))
	files = append(files, real...)
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	// past the bounds, and at and below the checks' floors
	f.Add(checksDoc(routing.MaxChecksPerApp + 1))
	f.Add([]byte("[http_service]\ninternal_port = 80\n[[http_service.checks]]\ninterval = 1000\ntimeout = '100ms'\n[[http_service.checks]]\ninterval = 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ft, err := Parse("fly.toml", data, [2]int{80, 443})
		if err != nil {
			return
		}
		def, err := json.Marshal(ft.Definition)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = routing.ParseApp("fuzz", def) // may refuse (a udp service with checks), must not panic
	})
}

// TestFlyTOMLUDP: a udp service comes through as one, with its ports and
// no handlers, and is a valid app.
func TestFlyTOMLUDP(t *testing.T) {
	src := "app = 'dns'\n[[services]]\ninternal_port = 5353\nprotocol = 'udp'\n[[services.ports]]\nport = 53\n"
	ft, err := Parse("fly.toml", []byte(src), [2]int{80, 443})
	if err != nil {
		t.Fatal(err)
	}
	s := ft.Definition.Services[0]
	if s.Protocol != "udp" || s.InternalPort != 5353 || len(s.Ports) != 1 || s.Ports[0].Port != 53 || len(s.Ports[0].Handlers) != 0 {
		t.Fatalf("service %+v, ports %+v", s, s.Ports[0])
	}
	raw, _ := json.Marshal(ft.Definition)
	if _, err := routing.ParseApp("dns", raw); err != nil {
		t.Fatalf("the udp app does not validate: %v", err)
	}
}

// TestFlyTOMLDidYouMean: a key that is a near miss of a key flyedge
// knows in the same table says which one in its warning; the keys of
// Fly.io that flyedge leaves out (the testdata files) get no guess.
func TestFlyTOMLDidYouMean(t *testing.T) {
	doc := `app = 'typo'
primary_regin = 'iad'

[http_service]
  internal_port = 8080
  force_http = true
  Concurrency = { type = 'requests' }

[[services]]
  internal_port = 5432
  protocl = 'tcp'
  [[services.ports]]
    port = 5432
    handler = ['pg_tls']
  [[services.ports]]
    port = 5433
    handlers = ['tls']
    tls_option = { alpn = ['h2'] }
  [services.concurrency]
    softlimit = 20
  [[services.tcp_checks]]
    intervall = '15s'
    grace = '1s'

[[service]]
  internal_port = 1
`
	ft, err := Parse("fly.toml", []byte(doc), [2]int{80, 443})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`fly.toml:2: primary_regin is not a key flyedge knows; ignored: did you mean "primary_region"?`,
		`fly.toml:6: http_service.force_http is not a key flyedge knows; ignored: did you mean "force_https"?`,
		`fly.toml:7: http_service.Concurrency is not a key flyedge knows; ignored: did you mean "concurrency"?`,
		`fly.toml:11: services[0].protocl is not a key flyedge knows; ignored: did you mean "protocol"?`,
		`fly.toml:14: services[0].ports[0].handler is not a key flyedge knows; ignored: did you mean "handlers"?`,
		`fly.toml:18: services[0].ports[1].tls_option is not a key flyedge knows; ignored: did you mean "tls_options"?`,
		`fly.toml:20: services[0].concurrency.softlimit is not a key flyedge knows; ignored: did you mean "soft_limit"?`,
		`fly.toml:22: services[0].tcp_checks[0].intervall is not a key flyedge knows; ignored: did you mean "interval"?`,
		`fly.toml:23: services[0].tcp_checks[0].grace is not a key flyedge knows; ignored: did you mean "grace_period"?`,
		`fly.toml:25: service is not a key flyedge knows; ignored: did you mean "services"?`,
	}
	var got []string
	for _, w := range ft.Warnings {
		got = append(got, w.String())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// the keys of the machines get guesses too, and no warning when right
	ft, err = Parse("fly.toml", []byte("kill_signall = 'SIGINT'\nstatic = []\nkill_signal = 'SIGINT'\n"), [2]int{80, 443})
	if err != nil {
		t.Fatal(err)
	}
	checkWarnings(t, ft.Warnings, []string{`fly.toml:1: kill_signall is not a key flyedge knows; ignored: did you mean`,
		`fly.toml:2: static is not a key flyedge knows; ignored: did you mean`})
	for _, w := range ft.Warnings {
		if w.Suggestion != strings.TrimSuffix(w.Key, "l") && w.Suggestion != w.Key+"s" {
			t.Errorf("%s: guess %q", w, w.Suggestion)
		}
	}

	files, _ := filepath.Glob(filepath.Join("testdata", "*.toml"))
	for _, name := range files {
		ft := readTOML(t, filepath.Base(name))
		for _, w := range ft.Warnings {
			if strings.Contains(w.String(), "did you mean") {
				t.Errorf("a key of Fly.io got a guess: %s", w)
			}
		}
	}
}

// TestFlyTOMLOptionsWithoutHandler: options for a handler a port does not
// run are left out with a warning saying why, not refused (Fly.io takes
// the file), and the app is valid without them.
func TestFlyTOMLOptionsWithoutHandler(t *testing.T) {
	doc := "app = 'web'\n[[services]]\ninternal_port = 80\n[[services.ports]]\nport = 80\nhandlers = ['http']\ntls_options = { alpn = ['h2'] }\n" +
		"[[services.ports]]\nport = 443\nhandlers = ['tls']\nproxy_proto_options = { version = 'v2' }\n"
	ft, err := Parse("fly.toml", []byte(doc), [2]int{80, 443})
	if err != nil {
		t.Fatal(err)
	}
	checkWarnings(t, ft.Warnings, []string{
		"fly.toml:7: services[0].ports[0].tls_options: the port has no tls handler (handlers are [http]);",
		"fly.toml:11: services[0].ports[1].proxy_proto_options: the port has no proxy_proto handler (handlers are [tls]);",
	})
	for _, p := range ft.Definition.Services[0].Ports {
		if p.TLSOptions != nil || p.ProxyProtoOptions != nil {
			t.Errorf("port %d kept options its handlers do not use", p.Port)
		}
	}
	raw, _ := json.Marshal(ft.Definition)
	if _, err := routing.ParseApp("web", raw); err != nil {
		t.Errorf("the app the file makes is refused: %v", err)
	}
}

// checksDoc is a fly.toml of one service with n http checks.
func checksDoc(n int) []byte {
	var b bytes.Buffer
	b.WriteString("app = 'big'\n[[services]]\ninternal_port = 8080\n[[services.ports]]\nport = 443\nhandlers = ['tls', 'http']\n")
	for i := range n {
		fmt.Fprintf(&b, "[[services.http_checks]]\ninterval = '10s'\ntimeout = '2s'\npath = '/health/%d'\n", i)
	}
	return b.Bytes()
}

// TestFlyTOMLBounds: a file past a bound, or a check below a floor, is
// an error with the line and the key, naming the limit.
func TestFlyTOMLBounds(t *testing.T) {
	svc := "[[services]]\ninternal_port = 80\n[[services.ports]]\nport = 80\n"
	envKeys := func(n int) string { // app, [env] and n keys
		var b strings.Builder
		b.WriteString("app = 'a'\n[env]\n")
		for i := range n {
			fmt.Fprintf(&b, "K%d = 'v'\n", i)
		}
		return b.String()
	}
	for _, tc := range []struct {
		name string
		doc  string
		want string
	}{
		{"interval = 1 (1 ms)", svc + "[[services.tcp_checks]]\ninterval = 1\n",
			"fly.toml:6: services[0].tcp_checks[0].interval: 1ms is below the minimum of 1s (a number is milliseconds)"},
		{"timeout 10ms", "[http_service]\ninternal_port = 80\n[[http_service.checks]]\ntimeout = '10ms'\n",
			"fly.toml:4: http_service.checks[0].timeout: 10ms is below the minimum of 100ms"},
		{"21 checks", string(checksDoc(21)),
			"fly.toml:87: services[0].http_checks[20]: more than 20 checks; at most 20 in one app"},
		{"65 services", strings.Repeat(svc, 65), "fly.toml:1: services: 65 services; at most 64 in one fly.toml"},
		{"5001 keys", envKeys(MaxKeys-2) + "[http_service]\n",
			fmt.Sprintf("fly.toml:%d: http_service: more than 5000 keys and tables; at most 5000 in one fly.toml", MaxKeys+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("fly.toml", []byte(tc.doc), [2]int{80, 443})
			var te *Error
			if !errors.As(err, &te) || err.Error() != tc.want {
				t.Errorf("got %v\nwant %s", err, tc.want)
			}
		})
	}
	// at the bounds, and at the floors, it parses
	doc := envKeys(MaxKeys-7) + "[http_service]\ninternal_port = 80\n[[http_service.checks]]\ninterval = 1000\ntimeout = '100ms'\n"
	if _, err := Parse("fly.toml", []byte(doc), [2]int{80, 443}); err != nil {
		t.Errorf("at the bounds: %v", err)
	}
}

// TestFlyTOMLLargeFile: a file as large as the admin API takes (1 MB)
// is refused with the limit it passes (it took 54 s to be taken).
func TestFlyTOMLLargeFile(t *testing.T) {
	big := checksDoc(13000) // 1 MB
	if _, err := Parse("fly.toml", big, [2]int{80, 443}); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("%d KB: %v; want an error naming a limit", len(big)>>10, err)
	}
	// the parser itself takes the 10,000 checks (its speed, linear in the
	// file's size, is BenchmarkParse's: docs/benchmarks.md)
	if _, err := parse("fly.toml", checksDoc(10000), [2]int{80, 443}, limits{}); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkParse: the time to parse a fly.toml of n checks (no bounds:
// the parser's own cost), and of the largest the admin API takes.
func BenchmarkParse(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		doc := checksDoc(n)
		b.Run(fmt.Sprintf("checks=%d", n), func(b *testing.B) {
			b.SetBytes(int64(len(doc)))
			for b.Loop() {
				if _, err := parse("fly.toml", doc, [2]int{80, 443}, limits{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	doc := checksDoc(13000)
	b.Run("1MB-refused", func(b *testing.B) {
		b.SetBytes(int64(len(doc)))
		for b.Loop() {
			if _, err := Parse("fly.toml", doc, [2]int{80, 443}); err == nil {
				b.Fatal("taken")
			}
		}
	})
}

// TestFlyTOMLAsFlyctlTakes: what flyctl takes is taken, each as Fly.io
// runs it; a service that serves nothing is left out with a warning.
func TestFlyTOMLAsFlyctlTakes(t *testing.T) {
	type port struct {
		port     int
		handlers string
	}
	for _, tc := range []struct {
		name, doc string
		ports     [][]port // each service's ports, in order
		warnings  []string
	}{
		{"no public services (a worker)", "app = 'worker'\n[env]\n  QUEUE = 'jobs'\n[processes]\n  worker = 'bin/work'\n", nil,
			nil},
		{"[http_service] and [[services]] on 80 and 443: the [http_service] keeps them",
			"app = 'web'\n[http_service]\n  internal_port = 8080\n[[services]]\n  internal_port = 8080\n  [[services.ports]]\n    port = 80\n    handlers = ['http']\n" +
				"  [[services.ports]]\n    port = 443\n    handlers = ['tls', 'http']\n  [[services.ports]]\n    port = 8443\n    handlers = ['tls']\n",
			[][]port{{{80, "http"}, {443, "tls http"}}, {{8443, "tls"}}},
			[]string{"fly.toml:6: services[0].ports: 80 (http_service), 443 (http_service) already served by an earlier service (Fly's proxy routes a port to one service: the first, [http_service] before [[services]]);"}},
		{"[[services]] with no port left", "[http_service]\n  internal_port = 8080\n[[services]]\n  internal_port = 8080\n  [[services.ports]]\n    port = 443\n    handlers = ['tls', 'http']\n",
			[][]port{{{80, "http"}, {443, "tls http"}}},
			[]string{"fly.toml:3: services[0]: its ports 443 (http_service) are already served by an earlier service (Fly's proxy routes a port to one service: the first, [http_service] before [[services]]): it has none left and serves nothing;"}},
		{"[services] as a single table", "[services]\n  internal_port = 53\n  protocol = 'udp'\n  [services.ports]\n    port = 53\n",
			[][]port{{{53, ""}}}, nil},
		{"a stray [services.concurrency] beside [http_service]", "[http_service]\n  internal_port = 8080\n\n[services.concurrency]\n  type = 'connections'\n  hard_limit = 10\n",
			[][]port{{{80, "http"}, {443, "tls http"}}},
			[]string{"fly.toml:4: services: no internal_port and no ports: the service serves nothing;"}},
		{"internal_port = 0, protocol = '', no ports (as flyctl writes them)", "app = 'x'\n[[services]]\n  internal_port = 0\n  protocol = ''\n",
			nil, []string{"fly.toml:2: services[0]: no internal_port and no ports: the service serves nothing;"}},
		{"[http_service] without internal_port", "[http_service]\n  force_https = true\n", nil,
			[]string{"fly.toml:1: http_service: no internal_port: the service serves nothing;"}},
		{"handlers in flyctl's order", "[[services]]\n  internal_port = 8080\n  [[services.ports]]\n    port = 443\n    handlers = ['http', 'tls']\n",
			[][]port{{{443, "tls http"}}}, nil},
		{"a port listed twice in a range", "[[services]]\n  internal_port = 7000\n  [[services.ports]]\n    port = 7001\n  [[services.ports]]\n    start_port = 7000\n    end_port = 7002\n",
			[][]port{{{7001, ""}, {7000, ""}, {7002, ""}}},
			[]string{"fly.toml:3: services[0].ports: 7001 (services[0]) already served by an earlier service"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft, err := Parse("fly.toml", []byte(tc.doc), [2]int{80, 443})
			if err != nil {
				t.Fatal(err)
			}
			var got [][]port
			for _, s := range ft.Definition.Services {
				var ps []port
				for _, p := range s.Ports {
					ps = append(ps, port{p.Port, strings.Join(p.Handlers, " ")})
				}
				got = append(got, ps)
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.ports) {
				t.Errorf("ports %v, want %v", got, tc.ports)
			}
			if len(ft.Scales) != len(ft.Definition.Services) {
				t.Errorf("%d scales for %d services", len(ft.Scales), len(ft.Definition.Services))
			}
			checkWarnings(t, ft.Warnings, tc.warnings)
			raw, _ := json.Marshal(ft.Definition)
			if _, err := routing.ParseApp("x", raw); err != nil {
				t.Errorf("the app the file makes is refused: %v", err)
			}
			if len(ft.Definition.Services) == 0 && !slices.ContainsFunc(ft.Notes(), func(n string) bool { return strings.Contains(n, "no public services") }) {
				t.Errorf("no note of an app that serves nothing: %q", ft.Notes())
			}
		})
	}
}

// TestFlyTOMLLegacyConcurrency: concurrency = "soft,hard", as older files
// have it, is requests limits, as flyctl converts it.
func TestFlyTOMLLegacyConcurrency(t *testing.T) {
	ft, err := Parse("fly.toml", []byte("[[services]]\n  internal_port = 8080\n  concurrency = \"12,23\"\n  [[services.ports]]\n    port = 80\n    handlers = ['http']\n"), [2]int{80, 443})
	if err != nil {
		t.Fatal(err)
	}
	if c := ft.Definition.Services[0].Concurrency; c == nil || c.Type != "requests" || c.SoftLimit != 12 || c.HardLimit != 23 {
		t.Errorf("concurrency %+v", c)
	}
	_, err = Parse("fly.toml", []byte("[[services]]\n  internal_port = 8080\n  concurrency = \"many\"\n"), [2]int{80, 443})
	if err == nil || !strings.Contains(err.Error(), `fly.toml:3: services[0].concurrency: "many": want a table, or "<soft_limit>,<hard_limit>"`) {
		t.Errorf("concurrency = \"many\": %v", err)
	}
}

// TestFlyTOMLScale: the scale-to-zero keys are handed through typed, as
// flyctl reads them (true is stop, false off); a value flyctl cannot
// read is refused.
func TestFlyTOMLScale(t *testing.T) {
	doc := "[[services]]\n  internal_port = 25565\n  auto_stop_machines = false\n  auto_start_machines = true\n  min_machines_running = 0\n  max_machines_running = 1\n" +
		"  [[services.ports]]\n    port = 25565\n[[services]]\n  internal_port = 8080\n  auto_stop_machines = 'suspend'\n  [[services.ports]]\n    port = 8080\n[[services]]\n  internal_port = 9\n  [[services.ports]]\n    port = 9\n"
	ft, err := Parse("fly.toml", []byte(doc), [2]int{80, 443})
	if err != nil {
		t.Fatal(err)
	}
	checkWarnings(t, ft.Warnings, nil)
	if len(ft.Scales) != 3 || ft.Scales[2] != nil {
		t.Fatalf("scales %v", ft.Scales)
	}
	a, b := ft.Scales[0], ft.Scales[1]
	if a.AutoStopMachines != "off" || !*a.AutoStartMachines || *a.MinMachinesRunning != 0 || *a.MaxMachinesRunning != 1 {
		t.Errorf("first service %+v", *a)
	}
	if b.AutoStopMachines != "suspend" || b.AutoStartMachines != nil || b.MinMachinesRunning != nil {
		t.Errorf("second service %+v", *b)
	}
	if _, err := Parse("fly.toml", []byte("[http_service]\n  internal_port = 80\n  auto_stop_machines = 'later'\n"), [2]int{80, 443}); err == nil ||
		!strings.HasPrefix(err.Error(), `fly.toml:3: http_service.auto_stop_machines: "later": want off, stop, suspend`) {
		t.Errorf("auto_stop_machines = 'later': %v", err)
	}
}

// TestFlyTOMLUDPOptions: what only a tcp service does (handlers, port
// options, checks) is left out of a udp service with a warning, not
// refused (flyctl takes it), and the app is one the edge takes.
func TestFlyTOMLUDPOptions(t *testing.T) {
	doc := "[[services]]\n  internal_port = 5060\n  protocol = 'udp'\n  [[services.ports]]\n    port = 5060\n    handlers = ['tls']\n" +
		"  [[services.tcp_checks]]\n    interval = '15s'\n"
	ft, err := Parse("fly.toml", []byte(doc), [2]int{80, 443})
	if err != nil {
		t.Fatal(err)
	}
	checkWarnings(t, ft.Warnings, []string{
		"fly.toml:4: services[0].ports: the ports of a udp service take no handlers and no options",
		"fly.toml:7: services[0].tcp_checks: the edge checks no udp service;",
	})
	raw, _ := json.Marshal(ft.Definition)
	if _, err := routing.ParseApp("sip", raw); err != nil {
		t.Errorf("the app the file makes is refused: %v", err)
	}
}

// TestFlyTOMLCheckRequest: an http check's headers, protocol = "https",
// tls_skip_verify and tls_server_name are the edge's; TLS options on a
// check over plain http are left out with a warning (false and empty, as
// flyctl writes them, silently); a header with a line break is an error;
// restart_limit stays the machines'.
func TestFlyTOMLCheckRequest(t *testing.T) {
	doc := `app = "a"
[[services]]
  internal_port = 8443
  [[services.ports]]
    port = 443
  [[services.http_checks]]
    path = "/healthz"
    protocol = "https"
    tls_skip_verify = true
    tls_server_name = "a.example.com"
    restart_limit = 0
    headers = { Host = "a.example.com", Authorization = "Bearer s3cret" }
  [[services.http_checks]]
    path = "/plain"
    protocol = "http"
    tls_skip_verify = true
    tls_server_name = ""
    [services.http_checks.headers]
`
	ft, err := Parse("fly.toml", []byte(doc), [2]int{80, 443})
	if err != nil {
		t.Fatal(err)
	}
	cs := ft.Definition.Services[0].Checks
	want := &routing.Check{Type: "http", Path: "/healthz", Protocol: "https", TLSSkipVerify: true, TLSServerName: "a.example.com",
		Headers: map[string]string{"Host": "a.example.com", "Authorization": "Bearer s3cret"}}
	if len(cs) != 2 || !reflect.DeepEqual(cs[0], want) {
		t.Fatalf("checks %+v, want first %+v", cs, want)
	}
	if c := cs[1]; c.Protocol != "" || c.TLSSkipVerify || c.TLSServerName != "" || len(c.Headers) != 0 {
		t.Errorf("plain http check %+v", c)
	}
	checkWarnings(t, ft.Warnings, []string{"fly.toml:16: services[0].http_checks[1].tls_skip_verify:"})
	if !slices.Contains(ft.MachineKeys, "services.http_checks.restart_limit") {
		t.Errorf("machine keys %v", ft.MachineKeys)
	}
	for _, tc := range []struct{ name, check, want string }{
		{"line break", "headers = { X-A = \"a\\r\\nX-B: b\" }", "fly.toml:7: services[0].http_checks[0].headers.X-A: a value with a line break or NUL"},
		{"header name", "headers = { 'X A' = 'a' }", `fly.toml:7: services[0].http_checks[0].headers: "X A" is not a header name`},
		{"header not a string", "headers = { X-A = 1 }", "fly.toml:7: services[0].http_checks[0].headers.X-A: 1: want a string"},
		{"tls_server_name", "protocol = 'https'\ntls_server_name = 'A_B'", `fly.toml:8: services[0].http_checks[0].tls_server_name: "A_B" is not a lower-case host name`},
	} {
		doc := "[[services]]\ninternal_port = 80\n[[services.ports]]\nport = 80\n[[services.http_checks]]\npath = '/'\n" + tc.check + "\n"
		_, err := Parse("fly.toml", []byte(doc), [2]int{80, 443})
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want it to start with %q", tc.name, err, tc.want)
		}
	}
}
