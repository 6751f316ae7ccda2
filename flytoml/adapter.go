package flytoml

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/pelletier/go-toml/v2"

	"github.com/flyedge/caddy-flyedge/routing"
)

func init() {
	caddyconfig.RegisterAdapter("flytoml", adapter{})
}

// adapter is the `flytoml` config adapter: a static edge from
// fly.toml files, for those who want no admin API calls to set up their
// apps.
//
//	caddy run --adapter flytoml --config fly.toml    # one app
//	caddy run --adapter flytoml --config edge.toml   # the edge, and a folder of fly.toml files
//
// An edge file is a TOML file with an [edge] table: region, base_domain,
// apps (a folder of fly.toml files, a file, or a glob, relative to the
// edge file; or a list of them, where a file may be a table
// {path = "fly.toml", app = "name"} naming its app, as fly deploy -a
// does), ports, udp_ports, http_port, https_port, v6, shared_v4, v4,
// egress_v4, egress_v6, auto_allocate, issuer ("acme" or "internal"),
// email (for acme) and admin (the admin endpoint's address). Another key
// is left out with a warning. Caddy reads one file as the config, so a
// folder is named in the edge file, not given to --config.
//
// The result is the fly and fly_ips apps, the fly_edge app with the
// edge's ports (the apps' tcp ports unless ports is set, their udp ports
// unless udp_ports is set; no fly_edge app when there are none: the
// edge then serves nothing), the HTTP site bound to fly/edge, and
// on-demand certificates for the names the apps answer to. What the
// files ask that is not the edge's (the keys of the machines, an app
// without public services) is logged at info level, one line a file.
type adapter struct{}

// edgeFile is the [edge] table of an edge file.
type edgeFile struct {
	Region       string   `toml:"region"`
	BaseDomain   string   `toml:"base_domain"`
	Apps         any      `toml:"apps"`
	Ports        []any    `toml:"ports"`
	UDPPorts     []any    `toml:"udp_ports"`
	HTTPPort     int      `toml:"http_port"`
	HTTPSPort    int      `toml:"https_port"`
	V6           []string `toml:"v6"`
	SharedV4     []string `toml:"shared_v4"`
	V4           []string `toml:"v4"`
	EgressV4     []string `toml:"egress_v4"`
	EgressV6     []string `toml:"egress_v6"`
	AutoAllocate *bool    `toml:"auto_allocate"`
	Issuer       string   `toml:"issuer"`
	Email        string   `toml:"email"`
	Admin        string   `toml:"admin"`
}

// edgeKeys are the keys of an [edge] table (edgeFile's).
var edgeKeys = []string{"region", "base_domain", "apps", "ports", "udp_ports", "http_port", "https_port", "v6", "shared_v4",
	"v4", "egress_v4", "egress_v6", "auto_allocate", "issuer", "email", "admin"}

// edgeKeyWarnings warns of the keys of an edge file that are not an
// [edge] table's, with their lines.
func edgeKeyWarnings(file string, body []byte) []caddyconfig.Warning {
	var doc map[string]any
	if toml.Unmarshal(body, &doc) != nil {
		return nil
	}
	lines, _ := keyLines(body, 0)
	var out []caddyconfig.Warning
	for _, k := range sortedKeys(doc) {
		if k != "edge" {
			out = append(out, caddyconfig.Warning{File: file, Line: lines[k], Message: k + " is not a key of an edge file (it has an [edge] table); ignored"})
		}
	}
	edge, _ := doc["edge"].(map[string]any)
	for _, k := range sortedKeys(edge) {
		if !slices.Contains(edgeKeys, k) {
			w := Warning{File: file, Line: lines["edge."+k], Key: "edge." + k, Suggestion: nearest(k, edgeKeys)}
			msg := w.Key + " is not a key of [edge]; ignored"
			if w.Suggestion != "" {
				msg += fmt.Sprintf(": did you mean %q?", w.Suggestion)
			}
			out = append(out, caddyconfig.Warning{File: file, Line: w.Line, Message: msg})
		}
	}
	return out
}

// appFile is a fly.toml an edge file names, with the app name its entry
// gives ("" to take the file's).
type appFile struct{ path, app string }

// Adapt implements caddyconfig.Adapter.
func (adapter) Adapt(body []byte, options map[string]any) ([]byte, []caddyconfig.Warning, error) {
	file, _ := options["filename"].(string)
	if file == "" {
		file = "fly.toml"
	}
	var probe struct {
		Edge *edgeFile `toml:"edge"`
	}
	if err := toml.Unmarshal(body, &probe); err != nil {
		return nil, nil, tomlSyntaxError(file, err)
	}
	edge := probe.Edge
	files := []appFile{{path: file}}
	var warnings []caddyconfig.Warning
	if edge == nil {
		edge = new(edgeFile)
	} else {
		warnings = edgeKeyWarnings(file, body)
		var err error
		if files, err = edgeAppFiles(file, edge.Apps); err != nil {
			return nil, warnings, err
		}
	}
	web := [2]int{cmp.Or(edge.HTTPPort, 80), cmp.Or(edge.HTTPSPort, 443)}
	apps := make(map[string]*routing.Application)
	from := make(map[string]string)
	log := caddy.Log().Named("adapter.flytoml")
	for _, f := range files {
		data := body
		if f.path != file {
			var err error
			if data, err = os.ReadFile(f.path); err != nil {
				return nil, warnings, err
			}
		}
		ft, err := Parse(f.path, data, web)
		if err != nil {
			return nil, warnings, err
		}
		for _, w := range ft.Warnings {
			warnings = append(warnings, caddyconfig.Warning{File: w.File, Line: w.Line, Message: w.Message()})
		}
		for _, n := range ft.Notes() {
			log.Info(n)
		}
		name := cmp.Or(f.app, ft.App) // the entry's name first, as fly deploy -a
		if name == "" {
			return nil, warnings, &Error{File: f.path, Key: "app", Msg: "missing: the edge needs each app's name: set app = \"<name>\" in the file, " +
				"or name it in an edge file's [edge] apps, as fly deploy -a does: apps = [{path = \"" + filepath.Base(f.path) + "\", app = \"<name>\"}]"}
		}
		if other, dup := from[name]; dup {
			return nil, warnings, &Error{File: f.path, Key: "app", Msg: fmt.Sprintf("%q is the app of %s too", name, other)}
		}
		apps[name], from[name] = ft.Definition, f.path
	}
	ports, err := edgePorts(file, "ports", edge.Ports, apps, "tcp")
	if err != nil {
		return nil, warnings, err
	}
	udpPorts, err := edgePorts(file, "udp_ports", edge.UDPPorts, apps, "udp")
	if err != nil {
		return nil, warnings, err
	}
	issuer := map[string]any{"module": cmp.Or(edge.Issuer, "acme")}
	if edge.Email != "" {
		issuer["email"] = edge.Email
	}
	if m := issuer["module"]; m != "acme" && m != "internal" {
		return nil, warnings, &Error{File: file, Key: "edge.issuer", Msg: fmt.Sprintf("%q: want acme or internal", m)}
	}
	cfg := map[string]any{
		"apps": map[string]any{
			"fly": map[string]any{
				"region":      edge.Region,
				"base_domain": edge.BaseDomain,
				"apps":        apps,
			},
			"fly_ips": map[string]any{
				"v6": edge.V6, "shared_v4": edge.SharedV4, "v4": edge.V4,
				"egress_v4": edge.EgressV4, "egress_v6": edge.EgressV6,
				"auto_allocate": edge.AutoAllocate,
				"http_port":     web[0], "https_port": web[1],
			},
			"fly_edge": map[string]any{"ports": ports, "udp_ports": udpPorts, "issuers": []any{issuer}},
			"http":     map[string]any{"servers": map[string]any{"edge": edgeHTTPServer}},
			"tls": map[string]any{"automation": map[string]any{
				"on_demand": map[string]any{"permission": map[string]any{"module": "fly"}},
			}},
		},
	}
	if len(ports) == 0 && len(udpPorts) == 0 {
		// no app has a public port (workers, private databases) and the
		// edge file lists none: the edge listens on nothing, and fly_edge
		// needs ports, so there is none; the apps and the admin API stay
		delete(cfg["apps"].(map[string]any), "fly_edge")
		log.Info("no app has a public port and [edge] lists none: the edge listens on no port (no fly_edge app)")
	}
	if edge.Admin != "" {
		cfg["admin"] = map[string]any{"listen": edge.Admin}
	}
	out, err := json.Marshal(dropEmpty(cfg))
	return out, warnings, err
}

// edgeHTTPServer is the HTTP site of an edge the adapter makes: every
// app, default deny; a request's header is read within the edge's TLS
// handshake bound (fly_edge's default handshake_timeout, 10s), as the
// README's site does.
var edgeHTTPServer = json.RawMessage(`{
	"listen": ["fly/edge:80"],
	"read_header_timeout": "10s",
	"routes": [
		{"match": [{"fly_app": {}}], "handle": [
			{"handler": "force_https"},
			{"handler": "fly_headers"},
			{"handler": "reverse_proxy", "dynamic_upstreams": {"source": "fly"},
			 "load_balancing": {"selection_policy": {"policy": "fly"}},
			 "transport": {"protocol": "fly"}}
		], "terminal": true},
		{"handle": [{"handler": "static_response", "abort": true}]}
	]
}`)

// edgePorts returns the edge's ports of a protocol: those the edge file
// lists under key, or else every port the apps' services of the protocol
// use.
func edgePorts(file, key string, listed []any, apps map[string]*routing.Application, protocol string) ([]string, error) {
	ports := make([]string, 0, len(listed))
	for i, p := range listed {
		switch v := p.(type) {
		case int64:
			ports = append(ports, strconv.FormatInt(v, 10))
		case string:
			ports = append(ports, v)
		default:
			return nil, &Error{File: file, Key: fmt.Sprintf("edge.%s[%d]", key, i), Msg: fmt.Sprintf("%v: want a port or a range such as \"10000-10999\"", p)}
		}
	}
	if len(ports) > 0 {
		return ports, nil
	}
	seen := map[int]bool{}
	for _, def := range apps {
		for _, s := range def.Services {
			if cmp.Or(s.Protocol, "tcp") != protocol {
				continue
			}
			for _, p := range s.Ports {
				seen[p.Port] = true
			}
		}
	}
	for _, p := range slices.Sorted(maps.Keys(seen)) {
		ports = append(ports, strconv.Itoa(p))
	}
	return ports, nil
}

// edgeAppFiles returns the fly.toml files an edge file names: folders
// (their *.toml files), files and globs, relative to the edge file; an
// entry may be a table {path = "...", app = "name"} that names the app
// of its one file.
func edgeAppFiles(edgeFile string, apps any) ([]appFile, error) {
	var entries []appFile
	switch v := apps.(type) {
	case nil:
		return nil, &Error{File: edgeFile, Key: "edge.apps", Msg: "missing: a folder of fly.toml files, a file or a glob"}
	case string:
		entries = []appFile{{path: v}}
	case []any:
		for i, e := range v {
			key := fmt.Sprintf("edge.apps[%d]", i)
			switch x := e.(type) {
			case string:
				entries = append(entries, appFile{path: x})
			case map[string]any:
				p, _ := x["path"].(string)
				a, _ := x["app"].(string)
				if p == "" || a == "" || len(x) != 2 {
					return nil, &Error{File: edgeFile, Key: key, Msg: fmt.Sprintf("%v: want {path = \"fly.toml\", app = \"<name>\"}", e)}
				}
				entries = append(entries, appFile{path: p, app: a})
			default:
				return nil, &Error{File: edgeFile, Key: key, Msg: fmt.Sprintf("%v: want a path, or {path = \"fly.toml\", app = \"<name>\"}", e)}
			}
		}
	default:
		return nil, &Error{File: edgeFile, Key: "edge.apps", Msg: fmt.Sprintf("%v: want a path or a list of them", apps)}
	}
	dir := filepath.Dir(edgeFile)
	self, _ := filepath.Abs(edgeFile)
	var files []appFile
	for _, e := range entries {
		p := e.path
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if info, err := os.Stat(p); err == nil && info.IsDir() {
			p = filepath.Join(p, "*.toml")
		}
		matches, err := filepath.Glob(p)
		if err != nil || len(matches) == 0 {
			return nil, &Error{File: edgeFile, Key: "edge.apps", Msg: fmt.Sprintf("%q: no fly.toml file there", e.path)}
		}
		if e.app != "" && len(matches) > 1 {
			return nil, &Error{File: edgeFile, Key: "edge.apps", Msg: fmt.Sprintf("%q names app %q and %d files: an app name goes with one file", e.path, e.app, len(matches))}
		}
		for _, m := range matches {
			if abs, _ := filepath.Abs(m); abs != self { // the edge file may sit among its apps
				files = append(files, appFile{path: m, app: e.app})
			}
		}
	}
	// in path order, each file once (a named entry over an unnamed one)
	slices.SortStableFunc(files, func(a, b appFile) int {
		return cmp.Or(cmp.Compare(a.path, b.path), -cmp.Compare(a.app, b.app))
	})
	return slices.CompactFunc(files, func(a, b appFile) bool { return a.path == b.path }), nil
}

// dropEmpty removes nil, empty strings and empty lists from a config
// built of maps, so the JSON carries what was set.
func dropEmpty(v any) any {
	m, ok := v.(map[string]any)
	if !ok {
		return v
	}
	for k, e := range m {
		switch x := e.(type) {
		case nil:
			delete(m, k)
		case string:
			if x == "" {
				delete(m, k)
			}
		case []string:
			if len(x) == 0 {
				delete(m, k)
			}
		case *bool:
			if x == nil {
				delete(m, k)
			}
		case map[string]any:
			dropEmpty(x)
		}
	}
	return m
}
