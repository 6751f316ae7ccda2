package routing

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// demoApp is an edge in iad with machines in iad (2), ord, lhr, fra and syd.
func demoApp(t *testing.T) *App {
	t.Helper()
	a := &App{
		Region:     "iad",
		BaseDomain: "edge.test",
		Apps: map[string]*Application{
			"web": {
				Hostnames: []string{"www.example.com", "*.wild.example.com"},
				Services: []*Service{{
					InternalPort: 8080,
					Ports: []*Port{
						{Port: 80, Handlers: []string{"http"}, ForceHTTPS: true},
						{Port: 443, Handlers: []string{"tls", "http"}},
					},
				}},
				Machines: []*Machine{
					{ID: "000000000000a1", Region: "iad", Address: "10.0.0.1"},
					{ID: "000000000000a2", Region: "iad", Address: "10.0.0.2"},
					{ID: "000000000000b1", Region: "ord", Address: "10.0.1.1"},
					{ID: "000000000000c1", Region: "lhr", Address: "10.0.2.1"},
					{ID: "000000000000d1", Region: "fra", Address: "10.0.3.1"},
					{ID: "000000000000e1", Region: "syd", Address: "10.0.4.1"},
					{ID: "000000000000f1", Region: "gru", Address: "10.0.5.1", State: "stopped"},
				},
			},
		},
	}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	return a
}

func TestSelect(t *testing.T) {
	a := demoApp(t)
	rt, err := routeFor(a, "web.edge.test", 443)
	if err != nil {
		t.Fatal(err)
	}
	idx := func(id string) int { return rt.MachineIndex(id) }
	for _, tc := range []struct {
		name    string
		pref    Preference
		down    []string
		load    map[string]int
		want    []string // any of these
		outcome Outcome
	}{
		{name: "edge region first", want: []string{"000000000000a1", "000000000000a2"}},
		{name: "least loaded in the edge region", load: map[string]int{"000000000000a1": 5}, want: []string{"000000000000a2"}},
		{name: "nearest region when the edge region is down", down: []string{"000000000000a1", "000000000000a2"}, want: []string{"000000000000b1"}},
		{name: "then the next nearest", down: []string{"000000000000a1", "000000000000a2", "000000000000b1"}, want: []string{"000000000000c1"}},
		{name: "prefer region", pref: Preference{PreferRegions: "lhr"}, want: []string{"000000000000c1"}},
		{name: "prefer region list, first usable wins", pref: Preference{PreferRegions: "cdg, lhr,iad"}, down: []string{"000000000000c1"}, want: []string{"000000000000a1", "000000000000a2"}},
		{name: "prefer country", pref: Preference{PreferRegions: "de"}, want: []string{"000000000000d1"}},
		{name: "prefer continent, nearest in it", pref: Preference{PreferRegions: "eu"}, want: []string{"000000000000c1"}},
		{name: "prefer continent oc", pref: Preference{PreferRegions: "OC"}, want: []string{"000000000000e1"}},
		{name: "prefer country us skips down iad", pref: Preference{PreferRegions: "us"}, down: []string{"000000000000a1", "000000000000a2"}, want: []string{"000000000000b1"}},
		{name: "prefer region with no machine falls back to nearest", pref: Preference{PreferRegions: "nrt,jp"}, want: []string{"000000000000a1", "000000000000a2"}},
		{name: "stopped machine is never chosen", pref: Preference{PreferRegions: "gru,sa"}, want: []string{"000000000000a1", "000000000000a2"}},
		{name: "prefer instance", pref: Preference{PreferInstance: "000000000000e1"}, want: []string{"000000000000e1"}},
		{name: "prefer instance down", pref: Preference{PreferInstance: "000000000000e1"}, down: []string{"000000000000e1"}, want: []string{"000000000000a1", "000000000000a2"}, outcome: PreferredUnavailable},
		{name: "prefer instance unknown", pref: Preference{PreferInstance: "ffffffffffffff", PreferRegions: "lhr"}, want: []string{"000000000000c1"}, outcome: PreferredUnavailable},
		{name: "prefer stopped instance", pref: Preference{PreferInstance: "000000000000f1"}, want: []string{"000000000000a1", "000000000000a2"}, outcome: PreferredUnavailable},
		{name: "force instance", pref: Preference{ForceInstance: "000000000000d1", PreferRegions: "lhr"}, want: []string{"000000000000d1"}},
		{name: "force instance down", pref: Preference{ForceInstance: "000000000000d1"}, down: []string{"000000000000d1"}, outcome: ForcedUnavailable},
		{name: "force stopped instance", pref: Preference{ForceInstance: "000000000000f1"}, outcome: ForcedUnavailable},
		{name: "force unknown instance", pref: Preference{ForceInstance: "ffffffffffffff"}, outcome: ForcedUnknown},
		{name: "everything down", down: []string{"000000000000a1", "000000000000a2", "000000000000b1", "000000000000c1", "000000000000d1", "000000000000e1"}, outcome: NoneAvailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := pool{down: map[int]bool{}, load: map[int]int{}}
			for _, id := range tc.down {
				p.down[idx(id)] = true
			}
			for id, l := range tc.load {
				p.load[idx(id)] = l
			}
			for range 20 { // ties are broken at random: every draw must be allowed
				i, outcome := Select(rt, p, tc.pref)
				if outcome != tc.outcome {
					t.Fatalf("outcome %d, want %d", outcome, tc.outcome)
				}
				if len(tc.want) == 0 {
					if i != -1 {
						t.Fatalf("chose %s, want none", rt.MachineID(i))
					}
					return
				}
				if i < 0 {
					t.Fatalf("chose none, want one of %v", tc.want)
				}
				if got := rt.MachineID(i); !slices.Contains(tc.want, got) {
					t.Fatalf("chose %s (%s), want one of %v", got, rt.MachineRegion(i), tc.want)
				}
			}
		})
	}
}

func TestSelectSpreadsLoad(t *testing.T) {
	a := demoApp(t)
	rt, _ := routeFor(a, "web.edge.test", 443)
	seen := map[string]int{}
	for range 200 {
		i, _ := Select(rt, pool{}, Preference{})
		seen[rt.MachineID(i)]++
	}
	if len(seen) != 2 || seen["000000000000a1"] < 50 || seen["000000000000a2"] < 50 {
		t.Fatalf("equal machines in the edge region should share the load, got %v", seen)
	}
}

func TestSelectSoftLimit(t *testing.T) {
	a := demoApp(t)
	a.Apps["web"].Services[0].Concurrency = &Concurrency{SoftLimit: 3, HardLimit: 10}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	rt, _ := routeFor(a, "web.edge.test", 443)
	p := pool{load: map[int]int{rt.MachineIndex("000000000000a1"): 3, rt.MachineIndex("000000000000a2"): 4}}
	if i, _ := Select(rt, p, Preference{}); rt.MachineID(i) != "000000000000b1" {
		t.Fatalf("machines at the soft limit in iad: want ord's machine, got %s", rt.MachineID(i))
	}
	for i := range rt.NumMachines() {
		p.load[i] = 5
	}
	if i, _ := Select(rt, p, Preference{}); rt.MachineRegion(i) != "iad" {
		t.Fatalf("every machine over the soft limit: want the nearest (iad), got %s", rt.MachineRegion(i))
	}
}

func TestConfigErrors(t *testing.T) {
	machine := func(id, region string) *Machine { return &Machine{ID: id, Region: region, Address: "127.0.0.1"} }
	svc := func(ports ...*Port) []*Service { return []*Service{{InternalPort: 8080, Ports: ports}} }
	for _, tc := range []struct {
		name string
		app  *App
		want string
	}{
		{"unknown edge region", &App{Region: "xyz"}, `region: "xyz" is not in the region catalog`},
		{"unknown machine region", &App{Apps: map[string]*Application{"a": {Machines: []*Machine{machine("00000000000001", "mars")}}}},
			`apps.a.machines[0].region: "mars" (machine 00000000000001) is not in the region catalog`},
		{"bad machine id", &App{Apps: map[string]*Application{"a": {Machines: []*Machine{machine("1234", "iad")}}}},
			`apps.a.machines[0].id: "1234" must be 14 lower-case hexadecimal characters`},
		{"duplicate machine id in an app", &App{Apps: map[string]*Application{"a": {Machines: []*Machine{machine("00000000000001", "iad"), machine("00000000000001", "lhr")}}}},
			`apps.a.machines: id 00000000000001 is already used by a machine of app a`},
		{"bad port", &App{Apps: map[string]*Application{"a": {Services: svc(&Port{Port: 70000, Handlers: []string{"http"}})}}},
			`apps.a.services[0].ports[0].port: 70000 is not a port number (1-65535)`},
		{"bad internal port", &App{Apps: map[string]*Application{"a": {Services: []*Service{{InternalPort: 0, Ports: []*Port{{Port: 80}}}}}}},
			`apps.a.services[0].internal_port: 0 is not a port number (1-65535)`},
		{"port used twice", &App{Apps: map[string]*Application{"a": {Services: svc(&Port{Port: 80, Handlers: []string{"http"}}, &Port{Port: 80})}}},
			`apps.a.services[0].ports[1].port: 80 is already used by another service of this app`},
		{"force_https without http", &App{Apps: map[string]*Application{"a": {Services: svc(&Port{Port: 5000, Handlers: []string{"tls"}, ForceHTTPS: true})}}},
			`apps.a.services[0].ports[0].force_https: port 5000 has handlers [tls]; force_https needs the http handler`},
		{"unknown handler", &App{Apps: map[string]*Application{"a": {Services: svc(&Port{Port: 80, Handlers: []string{"https"}})}}},
			`apps.a.services[0].ports[0].handlers: port 80: unknown handler "https"`},
		{"http before proxy_proto", &App{Apps: map[string]*Application{"a": {Services: svc(&Port{Port: 443, Handlers: []string{"http", "proxy_proto"}})}}},
			`apps.a.services[0].ports[0].handlers: port 443: handler "proxy_proto" is not allowed after "http"`},
		{"pg_tls with http", &App{Apps: map[string]*Application{"a": {Services: svc(&Port{Port: 5432, Handlers: []string{"pg_tls", "http"}})}}},
			`port 5432: handler "http" is not allowed after "pg_tls"`},
		{"proxy_proto then tls", &App{Apps: map[string]*Application{"a": {Services: svc(&Port{Port: 5000, Handlers: []string{"proxy_proto", "tls"}})}}},
			`port 5000: handler "tls" is not allowed after "proxy_proto"`},
		{"bad app name", &App{Apps: map[string]*Application{"My_App": {}}}, `apps: "My_App": name must be a DNS label`},
		{"bad via", &App{Via: "fly io"}, `via: "fly io" is not a token`},
		{"response header true", &App{Apps: map[string]*Application{"a": {Services: respSvc(map[string]any{"X-A": true})}}},
			`apps.a.services[0].http_options.response.headers.X-A: true (want a string, a list of strings, or false to remove)`},
		{"response header number", &App{Apps: map[string]*Application{"a": {Services: respSvc(map[string]any{"X-A": 3.0})}}},
			`apps.a.services[0].http_options.response.headers.X-A: 3 (want a string`},
		{"response header name", &App{Apps: map[string]*Application{"a": {Services: respSvc(map[string]any{"X A": "b"})}}},
			`apps.a.services[0].http_options.response.headers: "X A" is not a header name`},
		{"response header line break", &App{Apps: map[string]*Application{"a": {Services: respSvc(map[string]any{"X-A": "b\r\nSet-Cookie: x"})}}},
			`apps.a.services[0].http_options.response.headers.X-A: a value with a line break or NUL`},
		{"hostname taken", &App{Apps: map[string]*Application{"a": {Hostnames: []string{"x.com"}}, "b": {Hostnames: []string{"x.com"}}}},
			`is already a host name of app`},
		{"bad catalog entry", &App{Regions: map[string]Region{"xyz": {Country: "usa", Continent: "na"}}}, `regions: xyz: country "usa"`},
		// null entries of the config's lists of objects (JSON "services":[null]):
		// refused with the field, never a nil pointer dereference
		{"null service", &App{Apps: map[string]*Application{"a": {Services: []*Service{nil}}}}, `apps.a.services[0]: null`},
		{"null port", &App{Apps: map[string]*Application{"a": {Services: svc(&Port{Port: 80}, nil)}}}, `apps.a.services[0].ports[1]: null`},
		{"null check", &App{Apps: map[string]*Application{"a": {Services: []*Service{{InternalPort: 8080, Ports: []*Port{{Port: 80}}, Checks: []*Check{nil}}}}}},
			`apps.a.services[0].checks[0]: null`},
		{"tls_options without tls", &App{Apps: map[string]*Application{"a": {Services: svc(&Port{Port: 80, Handlers: []string{"http"}, TLSOptions: &TLSOptions{ALPN: []string{"h2"}}})}}},
			`apps.a.services[0].ports[0].tls_options: port 80 has handlers [http]; tls_options needs the tls handler`},
		{"org with a line break", &App{Apps: map[string]*Application{"a": {Org: "acme\nX-Evil: 1"}}}, `apps.a.org: "acme\nX-Evil: 1" (want at most 63 letters`},
		{"null machine", &App{Apps: map[string]*Application{"a": {Machines: []*Machine{machine("00000000000001", "iad"), nil}}}}, `apps.a.machines[1]: null`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := provision(t, tc.app)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestDuplicateMachineAcrossApps(t *testing.T) {
	m := func() []*Machine { return []*Machine{{ID: "00000000000001", Region: "iad", Address: "127.0.0.1"}} }
	err := provision(t, &App{Apps: map[string]*Application{"a": {Machines: m()}, "b": {Machines: m()}}})
	if err == nil || !strings.Contains(err.Error(), "id 00000000000001 is already used by a machine of app") {
		t.Fatalf("error %v, want a duplicate machine id error", err)
	}
}

func TestCatalog(t *testing.T) {
	if len(builtinRegions) != 36 {
		t.Fatalf("catalog has %d regions", len(builtinRegions))
	}
	for code, r := range builtinRegions {
		if err := r.validate(code); err != nil {
			t.Error(err)
		}
	}
	// Distances a user can check on a map.
	for _, tc := range []struct {
		a, b     string
		min, max float64
	}{
		{"iad", "ord", 900, 1000},
		{"iad", "lhr", 5800, 6000},
		{"lhr", "cdg", 330, 360},
		{"syd", "nrt", 7700, 7900},
	} {
		if d := distanceKm(builtinRegions[tc.a], builtinRegions[tc.b]); d < tc.min || d > tc.max {
			t.Errorf("distance %s-%s = %.0f km, want %.0f-%.0f", tc.a, tc.b, d, tc.min, tc.max)
		}
	}
	// An added region is usable by machines and as the edge region.
	a := &App{Region: "zzz", Regions: map[string]Region{"zzz": {City: "Test", Country: "nz", Continent: "oc", Latitude: -41.3, Longitude: 174.8}},
		Apps: map[string]*Application{"a": {Machines: []*Machine{{ID: "00000000000001", Region: "zzz", Address: "127.0.0.1"}}}}}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
}

// TestSetMachines: machines registered at run time join the app's routes
// beside the config's, replace each other, and may not take an ID that is
// in use.
func TestSetMachines(t *testing.T) {
	a := demoApp(t)
	rt, _ := routeFor(a, "web.edge.test", 443)
	before := rt.NumMachines()
	live := []*Machine{{ID: "0000000000aa01", Region: "iad", Address: "10.9.0.1"}}
	if err := a.SetMachines("web", live); err != nil {
		t.Fatal(err)
	}
	rt, _ = routeFor(a, "web.edge.test", 443)
	if rt.NumMachines() != before+1 || rt.MachineIndex("0000000000aa01") < 0 {
		t.Fatalf("after SetMachines the route has %d machines, want %d with the new one", rt.NumMachines(), before+1)
	}
	if i, _ := Select(rt, pool{}, Preference{ForceInstance: "0000000000aa01"}); i < 0 || rt.MachineID(i) != "0000000000aa01" {
		t.Errorf("Fly-Force-Instance-Id of the registered machine selected %d", i)
	}
	// replacing the live list drops the old live machine, keeps the config's
	if err := a.SetMachines("web", []*Machine{{ID: "0000000000aa02", Region: "lhr", Address: "10.9.0.2"}}); err != nil {
		t.Fatal(err)
	}
	rt, _ = routeFor(a, "web.edge.test", 443)
	if rt.MachineIndex("0000000000aa01") >= 0 || rt.MachineIndex("0000000000aa02") < 0 || rt.MachineIndex("000000000000a1") < 0 {
		t.Errorf("machines after replacing: %d", rt.NumMachines())
	}
	for _, tc := range []struct {
		name string
		m    *Machine
		want error
	}{
		{"a config machine's ID", &Machine{ID: "000000000000a1", Region: "iad", Address: "10.9.0.3"}, ErrMachineTaken},
		{"a bad region", &Machine{ID: "0000000000aa03", Region: "mars", Address: "10.9.0.3"}, nil},
	} {
		err := a.SetMachines("web", []*Machine{tc.m})
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: %v, want an error (%v)", tc.name, err, tc.want)
		}
	}
	if err := a.SetMachines("nope", nil); !errors.Is(err, ErrUnknownApp) {
		t.Errorf("unknown app: %v", err)
	}
	if ms, _ := a.Machines("web"); len(ms) != before+1 {
		t.Errorf("Machines lists %d, want %d", len(ms), before+1)
	}
}

// TestContinentOverCountry: a two-letter preference that is a continent
// code means the continent, even when a region's country has the same
// letters (Namibia is "na").
func TestContinentOverCountry(t *testing.T) {
	a := &App{
		Region:  "jnb",
		Regions: map[string]Region{"wdh": {City: "Windhoek", Country: "na", Continent: "af", Latitude: -22.56, Longitude: 17.08}},
		Apps: map[string]*Application{"web": {
			Services: []*Service{{InternalPort: 8080, Ports: []*Port{{Port: 443, Handlers: []string{"tls", "http"}}}}},
			Machines: []*Machine{
				{ID: "000000000000b1", Region: "wdh", Address: "10.0.0.1"}, // nearer to jnb
				{ID: "000000000000b2", Region: "iad", Address: "10.0.0.2"},
			},
		}},
	}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	rt, _ := routeFor(a, "web.localhost", 443)
	if i, _ := Select(rt, pool{}, Preference{PreferRegions: "na"}); i < 0 || rt.MachineID(i) != "000000000000b2" {
		t.Errorf("Fly-Prefer-Region: na chose %d, want the machine in North America", i)
	}
}

// respSvc is one HTTP service whose responses get headers.
func respSvc(headers map[string]any) []*Service {
	return []*Service{{InternalPort: 8080, Ports: []*Port{{Port: 80, Handlers: []string{"http"}}},
		HTTPOptions: &HTTPOptions{Response: &HTTPResponse{Headers: headers}}}}
}

// TestStoredAppsLoadUnderNewRules: rules added for apps coming in (org's
// form, options only on ports with their handler) refuse a new app, and
// leave an app the store kept from before them loading: an edge that is
// upgraded starts with what it stored.
func TestStoredAppsLoadUnderNewRules(t *testing.T) {
	for _, body := range []string{
		`{"org":"acme corp","services":[{"internal_port":80,"ports":[{"port":80,"handlers":["http"]}]}]}`,
		`{"services":[{"internal_port":80,"ports":[{"port":80,"handlers":["http"],"tls_options":{"alpn":["h2"]}}]}]}`,
		`{"services":[{"internal_port":80,"ports":[{"port":443,"handlers":["tls"],"proxy_proto_options":{"version":"v2"}}]}]}`,
	} {
		if _, err := ParseApp("web", []byte(body)); err == nil {
			t.Errorf("ParseApp took %s", body)
		}
		if _, err := ParseStoredApp("web", []byte(body)); err != nil {
			t.Errorf("a stored app no longer loads: %v", err)
		}
	}
}
