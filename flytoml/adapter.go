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
// edge file; or a list of them), ports, http_port, https_port, v6,
// shared_v4, v4, egress_v4, egress_v6, auto_allocate, issuer ("acme" or
// "internal"), email (for acme) and admin (the admin endpoint's
// address). Caddy reads one file as the config, so a folder is named in
// the edge file, not given to --config.
//
// The result is the fly and fly_ips apps with the edge's ports (the
// apps' ports unless ports is set), the HTTP site bound to fly/edge, and
// on-demand certificates for the names the apps answer to.
type adapter struct{}

// edgeFile is the [edge] table of an edge file.
type edgeFile struct {
	Region       string   `toml:"region"`
	BaseDomain   string   `toml:"base_domain"`
	Apps         any      `toml:"apps"`
	Ports        []any    `toml:"ports"`
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
	files := []string{file}
	if edge == nil {
		edge = new(edgeFile)
	} else {
		var err error
		if files, err = edgeAppFiles(file, edge.Apps); err != nil {
			return nil, nil, err
		}
	}
	web := [2]int{cmp.Or(edge.HTTPPort, 80), cmp.Or(edge.HTTPSPort, 443)}
	apps := make(map[string]*routing.Application)
	from := make(map[string]string)
	var warnings []caddyconfig.Warning
	for _, f := range files {
		data := body
		if f != file {
			var err error
			if data, err = os.ReadFile(f); err != nil {
				return nil, warnings, err
			}
		}
		ft, err := Parse(f, data, web)
		if err != nil {
			return nil, warnings, err
		}
		for _, w := range ft.Warnings {
			warnings = append(warnings, caddyconfig.Warning{File: w.File, Line: w.Line, Message: w.Message()})
		}
		if ft.App == "" {
			return nil, warnings, &Error{File: f, Key: "app", Msg: "missing: the edge needs each app's name"}
		}
		if other, dup := from[ft.App]; dup {
			return nil, warnings, &Error{File: f, Key: "app", Msg: fmt.Sprintf("%q is the app of %s too", ft.App, other)}
		}
		apps[ft.App], from[ft.App] = ft.Definition, f
	}
	ports := make([]string, 0, len(edge.Ports))
	for i, p := range edge.Ports {
		switch v := p.(type) {
		case int64:
			ports = append(ports, strconv.FormatInt(v, 10))
		case string:
			ports = append(ports, v)
		default:
			return nil, warnings, &Error{File: file, Key: fmt.Sprintf("edge.ports[%d]", i), Msg: fmt.Sprintf("%v: want a port or a range such as \"10000-10999\"", p)}
		}
	}
	if len(ports) == 0 {
		seen := map[int]bool{}
		for _, def := range apps {
			for _, s := range def.Services {
				for _, p := range s.Ports {
					seen[p.Port] = true
				}
			}
		}
		for _, p := range slices.Sorted(maps.Keys(seen)) {
			ports = append(ports, strconv.Itoa(p))
		}
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
			"fly_edge": map[string]any{"ports": ports, "issuers": []any{issuer}},
			"http":     map[string]any{"servers": map[string]any{"edge": edgeHTTPServer}},
			"tls": map[string]any{"automation": map[string]any{
				"on_demand": map[string]any{"permission": map[string]any{"module": "fly"}},
			}},
		},
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

// edgeAppFiles returns the fly.toml files an edge file names: folders
// (their *.toml files), files and globs, relative to the edge file.
func edgeAppFiles(edgeFile string, apps any) ([]string, error) {
	var entries []string
	switch v := apps.(type) {
	case nil:
		return nil, &Error{File: edgeFile, Key: "edge.apps", Msg: "missing: a folder of fly.toml files, a file or a glob"}
	case string:
		entries = []string{v}
	case []any:
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, &Error{File: edgeFile, Key: fmt.Sprintf("edge.apps[%d]", i), Msg: fmt.Sprintf("%v: want a path", e)}
			}
			entries = append(entries, s)
		}
	default:
		return nil, &Error{File: edgeFile, Key: "edge.apps", Msg: fmt.Sprintf("%v: want a path or a list of them", apps)}
	}
	dir := filepath.Dir(edgeFile)
	self, _ := filepath.Abs(edgeFile)
	var files []string
	for _, e := range entries {
		p := e
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if info, err := os.Stat(p); err == nil && info.IsDir() {
			p = filepath.Join(p, "*.toml")
		}
		matches, err := filepath.Glob(p)
		if err != nil || len(matches) == 0 {
			return nil, &Error{File: edgeFile, Key: "edge.apps", Msg: fmt.Sprintf("%q: no fly.toml file there", e)}
		}
		for _, m := range matches {
			if abs, _ := filepath.Abs(m); abs != self { // the edge file may sit among its apps
				files = append(files, m)
			}
		}
	}
	slices.Sort(files)
	return slices.Compact(files), nil
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
