// Package flytoml reads fly.toml files, the way Fly.io's configuration
// reference writes them, into flyedge apps (Parse), and registers the
// `flytoml` config adapter: a static edge from fly.toml files. It holds
// no state: the admin API (ipalloc) and the CLI (cli) call Parse.
package flytoml

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/flyedge/caddy-flyedge/routing"
)

// File is an app read from a fly.toml.
type File struct {
	// App is the file's app name ("" when it has none).
	App string
	// PrimaryRegion is the file's primary_region.
	PrimaryRegion string
	// Definition is the app's services, in the config's shape.
	Definition *routing.Application
	// Scales are what each service of Definition.Services (same index)
	// asks of scale-to-zero: auto_stop_machines, auto_start_machines,
	// min_machines_running, max_machines_running; nil for a service that
	// sets none. Read and handed through: flyedge does not act on them yet.
	Scales []*Scale
	// MachineKeys are the keys of the file that only the machines or the
	// builder read (env, build, mounts, [[vm]], kill_signal, ...), dotted
	// and without array indexes, each once: not the edge's business, so
	// they get no warning each but one note (Notes).
	MachineKeys []string
	// Warnings name the keys of the file that flyedge does not implement
	// and left out, with their lines.
	Warnings []Warning

	file string
}

// Scale is what a service of a fly.toml asks of scale-to-zero, as
// written; nil fields were not set.
type Scale struct {
	// AutoStopMachines is "off", "stop" or "suspend" (true is "stop",
	// false "off", as flyctl reads them); "" when not set.
	AutoStopMachines   string
	AutoStartMachines  *bool
	MinMachinesRunning *int
	MaxMachinesRunning *int
}

// Notes are what the file asks that is not the edge's to do, for a
// person at info level: the keys left to the machines and the builder
// (one line), and an app with no public services, which the edge
// serves nothing for.
func (f *File) Notes() []string {
	var out []string
	if len(f.MachineKeys) > 0 {
		out = append(out, fmt.Sprintf("%s: %s: read by the machines or the builder, not the edge; left to them", f.file, strings.Join(f.MachineKeys, ", ")))
	}
	if len(f.Definition.Services) == 0 {
		out = append(out, fmt.Sprintf("%s: no public services (as a worker or a private database has none): the edge serves nothing for this app", f.file))
	}
	return out
}

// Warning is a key of a fly.toml that flyedge left out.
type Warning struct {
	File string
	Line int // 0 when unknown
	Key  string
	// A key flyedge knows in the same table that Key is a near miss of
	// (force_http for force_https), or "".
	Suggestion string
	// Why the key is left out, when it is a key flyedge knows ("" for a
	// key it does not implement).
	Reason string
}

func (w Warning) String() string {
	if w.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", w.File, w.Line, w.Message())
	}
	return fmt.Sprintf("%s: %s", w.File, w.Message())
}

// Message is the warning without its file and line.
func (w Warning) Message() string {
	if w.Reason != "" {
		return w.Key + ": " + w.Reason + "; ignored"
	}
	if w.Suggestion != "" {
		return fmt.Sprintf("%s is not a key flyedge knows; ignored: did you mean %q?", w.Key, w.Suggestion)
	}
	return w.Key + " is not implemented by flyedge; ignored"
}

// Error is a fly.toml that cannot be taken: where, and why.
type Error struct {
	File string // the file's name, as given
	Line int    // 0 when unknown
	Key  string // the key, dotted, with array indexes: services[0].ports[1].port
	Msg  string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Key != "" {
		b.WriteString(": " + e.Key)
	}
	return b.String() + ": " + e.Msg
}

// Parse reads a fly.toml the way Fly.io's configuration reference
// writes it: app, primary_region, [http_service] (its ports 80 with the
// http handler and 443 with tls and http), [[services]] with their
// [[services.ports]] (one port, or start_port to end_port),
// concurrency, tls_options, http_options, proxy_proto_options, and
// tcp_checks and http_checks. Durations are Go durations ("15s", "1m0s")
// or, as older files have them, milliseconds. Edge ports 80 and 443 become
// webPorts[0] and webPorts[1] (the edge's http_port and https_port).
//
// It takes what flyctl takes: a single [services] table (and the
// single tables of ports and checks), concurrency = "soft,hard",
// handlers = ["http", "tls"] (as [tls http]), a service without
// internal_port or ports (left out: it serves nothing), a port two
// services give (the first keeps it), an app with no services. The
// scale-to-zero keys are read into Scales; the keys only the machines or
// the builder read (env, build, mounts, [[vm]], kill_signal, ...) into
// MachineKeys, for one note (Notes). [processes] and a service's
// processes say which machines serve the service (processes.go). A key
// the edge should act on and does not (statics, a check's headers, ...),
// or one Fly.io
// does not have, is left out with a warning that names it; a value
// Fly.io would refuse is a *Error with the file, the key and its line.
//
// Parse takes time linear in the file's size, and bounds what one file
// may hold: MaxKeys keys and tables, MaxServices services, and
// routing.MaxChecksPerApp checks; more is a *Error naming the limit.
func Parse(file string, data []byte, webPorts [2]int) (*File, error) {
	return parse(file, data, webPorts, defaultLimits)
}

// The most one fly.toml may hold. Fly.io's files hold tens of keys (the
// largest of the 23 real files we keep, about 50), one or two services and at
// most three checks; the bounds keep what one upload costs the edge
// small (a 1 MB file, the admin API's body limit, is refused in
// milliseconds).
const (
	// MaxKeys is how many keys and table headers a fly.toml may have,
	// counted as written: key = value, [table] and [[table]] count one
	// each (an inline table with its keys counts one).
	MaxKeys = 5000
	// MaxServices is how many [[services]] and [http_service] a fly.toml
	// may have together.
	MaxServices = 64
)

// limits are the bounds Parse applies; 0 is no bound (the benchmark's).
type limits struct{ keys, services, checks int }

var defaultLimits = limits{keys: MaxKeys, services: MaxServices, checks: routing.MaxChecksPerApp}

func parse(file string, data []byte, webPorts [2]int, lim limits) (*File, error) {
	// the keys first: a file of too many is refused before it is decoded
	lines, err := keyLines(data, lim.keys)
	if err != nil {
		var le *limitError
		if errors.As(err, &le) {
			return nil, &Error{File: file, Line: le.line, Key: le.key, Msg: le.Error()}
		}
		var doc map[string]any
		if derr := toml.Unmarshal(data, &doc); derr != nil {
			return nil, tomlSyntaxError(file, derr) // with its line
		}
		return nil, tomlSyntaxError(file, err)
	}
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		return nil, tomlSyntaxError(file, err)
	}
	w := &tomlWalker{file: file, lines: lines, web: webPorts, lim: lim}
	out := &File{Definition: new(routing.Application), file: file}
	w.processGroups(doc) // before the services, which take their default group from it
	// [http_service] first, then [[services]]: flyctl's order
	// (Config.AllServices), which decides who keeps a port two services
	// give (see takePorts)
	var svcs []walked
	if v, ok := doc["http_service"]; ok {
		svcs = append(svcs, w.httpService("http_service", w.table("http_service", v)))
	}
	for _, key := range sortedKeys(doc) {
		v := doc[key]
		switch key {
		case "processes": // read above
		case "app":
			out.App = w.str(key, v)
		case "primary_region":
			out.PrimaryRegion = w.str(key, v)
		case "http_service":
		case "services":
			// flyctl reads a single [services] table as one service
			list, single := w.tablesOrOne(key, v)
			if n := len(list) + len(svcs); w.lim.services > 0 && n > w.lim.services {
				w.fail(key, "%d services; at most %d in one fly.toml", n, w.lim.services)
				break
			}
			for i, s := range list {
				path := fmt.Sprintf("services[%d]", i)
				if single {
					path = "services"
				}
				svcs = append(svcs, w.service(path, s))
			}
		default:
			if machineKeys[key] {
				w.machine(key)
			} else {
				w.ignore(key, topKeys)
			}
		}
	}
	if w.err != nil {
		return nil, w.err
	}
	for _, s := range w.takePorts(svcs) {
		out.Definition.Services = append(out.Definition.Services, s.svc)
		out.Scales = append(out.Scales, s.scale)
	}
	out.MachineKeys = w.machineKeys
	slices.SortStableFunc(w.warnings, func(a, b Warning) int { return cmp.Compare(a.Line, b.Line) })
	out.Warnings = w.warnings
	return out, nil
}

// walked is a service as read, before takePorts.
type walked struct {
	path  string
	svc   *routing.Service
	scale *Scale
	table map[string]any
}

// takePorts returns the services that serve something: a service
// without internal_port or without ports serves nothing (flyctl takes
// it, and warns of the missing ports), and is left out with a warning.
// A port (of a protocol) goes to one service, as Fly's proxy routes a
// port to one: the first that gives it, [http_service] before
// [[services]] and in the file's order; a later service that gives it
// too (an [http_service] beside [[services]] on 80 and 443) loses it,
// with a warning, and is left out when it has no port left.
func (w *tomlWalker) takePorts(svcs []walked) []walked {
	taken := map[int]string{} // the port (plus 1<<16 for udp) -> the service that has it
	out := svcs[:0]
	for _, s := range svcs {
		switch {
		case s.svc.InternalPort == 0 && len(s.svc.Ports) == 0:
			w.dropIn(s.path, s.table, "no internal_port and no ports: the service serves nothing")
			continue
		case s.svc.InternalPort == 0:
			w.dropIn(s.path, s.table, "no internal_port: the service serves nothing")
			continue
		case len(s.svc.Ports) == 0:
			w.dropIn(s.path, s.table, "no ports: the service serves nothing")
			continue
		}
		var lost []string
		kept := s.svc.Ports[:0]
		for _, p := range s.svc.Ports {
			key := p.Port
			if s.svc.Protocol == "udp" {
				key += 1 << 16
			}
			if by, ok := taken[key]; ok {
				lost = append(lost, fmt.Sprintf("%d (%s)", p.Port, by))
				continue
			}
			taken[key] = s.path
			kept = append(kept, p)
		}
		s.svc.Ports = kept
		if len(lost) > 0 {
			why := fmt.Sprintf("already served by an earlier service (Fly's proxy routes a port to one service: the first, [http_service] before [[services]])")
			if len(kept) == 0 {
				w.dropIn(s.path, s.table, fmt.Sprintf("its ports %s are %s: it has none left and serves nothing", strings.Join(lost, ", "), why))
				continue
			}
			w.dropIn(s.path+".ports", nil, fmt.Sprintf("%s %s", strings.Join(lost, ", "), why))
		}
		out = append(out, s)
	}
	return out
}

func tomlSyntaxError(file string, err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, _ := de.Position()
		return &Error{File: file, Line: row, Key: strings.Join(de.Key(), "."), Msg: de.Error()}
	}
	var pe *unstable.ParserError
	if errors.As(err, &pe) {
		return &Error{File: file, Msg: pe.Message}
	}
	return &Error{File: file, Msg: err.Error()}
}

// limitError is a file with more keys than the limit.
type limitError struct {
	line  int
	key   string
	limit int
}

func (e *limitError) Error() string {
	return fmt.Sprintf("more than %d keys and tables; at most %d in one fly.toml", e.limit, e.limit)
}

// keyLines returns the line of every key of a TOML document, by its
// path: dotted, with the index of each array table
// (services[0].ports[1].handlers); a *limitError past maxKeys keys and
// tables (0: no limit). One pass: each key's line is found among the
// offsets of the document's line breaks, taken once.
func keyLines(data []byte, maxKeys int) (map[string]int, error) {
	lines := make(map[string]int)
	counts := make(map[string]int) // array table path -> entries so far
	breaks := lineBreaks(data)
	var p unstable.Parser
	p.Reset(data)
	table := ""
	keys := 0
	for p.NextExpression() {
		e := p.Expression()
		if e.Kind == unstable.Table || e.Kind == unstable.ArrayTable || e.Kind == unstable.KeyValue {
			if keys++; maxKeys > 0 && keys > maxKeys {
				in := table
				if e.Kind != unstable.KeyValue {
					in = "" // a table's header is its whole path
				}
				return nil, &limitError{line: keyLine(&p, e, breaks), key: keyPath(in, e), limit: maxKeys}
			}
		}
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			path := ""
			it := e.Key()
			for it.Next() {
				name := string(it.Node().Data)
				if path != "" {
					path += "."
				}
				path += name
				if n, ok := counts[path]; ok && !(it.IsLast() && e.Kind == unstable.ArrayTable) {
					path += fmt.Sprintf("[%d]", n-1) // inside the latest entry
				}
			}
			line := keyLine(&p, e, breaks)
			if e.Kind == unstable.ArrayTable {
				if _, ok := lines[path]; !ok {
					lines[path] = line // the array's first entry
				}
				n := counts[path]
				counts[path] = n + 1
				path += fmt.Sprintf("[%d]", n)
			}
			table = path
			lines[path] = line
		case unstable.KeyValue:
			lines[keyPath(table, e)] = keyLine(&p, e, breaks)
		}
	}
	return lines, p.Error()
}

// keyPath is the path of a key-value expression in table.
func keyPath(table string, e *unstable.Node) string {
	path := table
	it := e.Key()
	for it.Next() {
		if path != "" {
			path += "."
		}
		path += string(it.Node().Data)
	}
	return path
}

// lineBreaks returns the offsets of data's line breaks, in order.
func lineBreaks(data []byte) []int {
	var out []int
	for i := 0; ; {
		j := bytes.IndexByte(data[i:], '\n')
		if j < 0 {
			return out
		}
		out = append(out, i+j)
		i += j + 1
	}
}

// keyLine returns the line of an expression's key, 0 when unknown;
// breaks are the offsets of the document's line breaks.
func keyLine(p *unstable.Parser, e *unstable.Node, breaks []int) (line int) {
	defer func() {
		if recover() != nil { // a quoted key with escapes is a copy
			line = 0
		}
	}()
	it := e.Key()
	if !it.Next() {
		return 0
	}
	n := it.Node()
	r := n.Raw
	if r.Length == 0 {
		r = p.Range(n.Data)
	}
	off, _ := slices.BinarySearch(breaks, int(r.Offset))
	return off + 1 // the breaks before the key, plus one
}

// tomlWalker converts a decoded fly.toml, keeping the first error and
// every warning.
type tomlWalker struct {
	file     string
	lines    map[string]int
	web      [2]int
	lim      limits
	checks   int      // checks read so far
	groups   []string // [processes]' group names, sorted (processes.go)
	err      error
	warnings []Warning
	// keys only the machines or the builder read (machine)
	machineKeys []string
}

// line returns the line of key, or of the nearest enclosing key written
// on a line of its own (a key inside an inline table).
func (w *tomlWalker) line(key string) int {
	for k := key; k != ""; {
		if n, ok := w.lines[k]; ok {
			return n
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

func (w *tomlWalker) fail(key, format string, args ...any) {
	if w.err == nil {
		w.err = &Error{File: w.file, Line: w.line(key), Key: key, Msg: fmt.Sprintf(format, args...)}
	}
}

// ignore leaves key out with a warning; known are the keys flyedge takes
// in its table, for a guess at what a near miss meant.
func (w *tomlWalker) ignore(key string, known []string) {
	name := key[strings.LastIndexByte(key, '.')+1:]
	w.warnings = append(w.warnings, Warning{File: w.file, Line: w.line(key), Key: key, Suggestion: nearest(name, known)})
}

// drop leaves out a key flyedge knows, with a warning saying why.
func (w *tomlWalker) drop(key, reason string) {
	w.warnings = append(w.warnings, Warning{File: w.file, Line: w.line(key), Key: key, Reason: reason})
}

// dropIn is drop for a table t at key, which may have no line of its
// own (a single [services] written only as [services.concurrency]): the
// line is then its first key's.
func (w *tomlWalker) dropIn(key string, t map[string]any, reason string) {
	line := w.line(key)
	for _, k := range sortedKeys(t) {
		if n := w.line(key + "." + k); line == 0 || (n > 0 && n < line) {
			line = n
		}
	}
	w.warnings = append(w.warnings, Warning{File: w.file, Line: line, Key: key, Reason: reason})
}

// machine notes a key that only the machines or the builder read: no
// warning, one note for all of them (File.Notes).
func (w *tomlWalker) machine(key string) {
	var b strings.Builder
	for i := 0; i < len(key); i++ { // services[0].script_checks -> services.script_checks
		if key[i] == '[' {
			for i < len(key) && key[i] != ']' {
				i++
			}
			continue
		}
		b.WriteByte(key[i])
	}
	if k := b.String(); !slices.Contains(w.machineKeys, k) {
		w.machineKeys = append(w.machineKeys, k)
	}
}

// machineKeys are the top-level keys of a fly.toml that only the
// machines or the builder read (Fly's configuration reference):
// build, deploy and its release_command, env, files, mounts, the VM's
// size, the kill signal and timeout, swap, the console command, metrics,
// restart policies, the top-level machine checks ([checks], run against
// the machine, not routed through the proxy), experimental (cmd,
// entrypoint, auto_rollback, private_network, allowed_public_ports).
// With their old spellings (mount, metric, compute), as flyctl reads them.
var machineKeys = map[string]bool{
	"build": true, "deploy": true, "env": true, "files": true, "mounts": true, "mount": true,
	"vm": true, "compute": true, "computes": true, "kill_signal": true, "kill_timeout": true,
	"swap_size_mb": true, "console_command": true, "metrics": true, "metric": true,
	"restart": true, "checks": true, "experimental": true, "host_dedication_id": true,
}

// The keys flyedge takes in each table of a fly.toml (the cases of the
// walker's switches), for ignore's guesses.
var (
	topKeys         = append([]string{"app", "primary_region", "http_service", "services", "processes", "statics"}, slices.Sorted(maps.Keys(machineKeys))...)
	httpServiceKeys = append([]string{"internal_port", "force_https", "concurrency", "tls_options", "http_options", "checks", "processes"}, scaleKeys...)
	serviceKeys     = append([]string{"internal_port", "protocol", "ports", "concurrency", "tcp_checks", "http_checks", "processes"}, scaleKeys...)
	scaleKeys       = []string{"auto_stop_machines", "auto_start_machines", "min_machines_running", "max_machines_running"}
	portKeys        = []string{"port", "start_port", "end_port", "handlers", "force_https", "tls_options", "http_options", "proxy_proto_options"}
	concurrencyKeys = []string{"type", "soft_limit", "hard_limit"}
	tlsOptionKeys   = []string{"alpn", "versions", "default_self_signed"}
	httpOptionKeys  = []string{"h2_backend", "response"}
	responseKeys    = []string{"headers", "pristine"}
	proxyProtoKeys  = []string{"version"}
	checkKeys       = []string{"interval", "timeout", "grace_period", "path", "method", "protocol", "headers", "tls_skip_verify", "tls_server_name"}
)

// nearest returns the key of known that name is a near miss of: at an
// edit distance (ignoring case; a swap of two neighbours counts one) of
// 1, or 2 for names of five characters or more, the nearest first; else
// the only one that a name of four characters or more begins. "" when
// none is, or name is one of them.
func nearest(name string, known []string) string {
	lname := strings.ToLower(name)
	limit := 1
	if len(name) >= 5 {
		limit = 2
	}
	best, bestD := "", limit+1
	for _, k := range known {
		if k == name {
			return ""
		}
		if d := editDistance(lname, k); d < bestD {
			best, bestD = k, d
		}
	}
	if best != "" {
		return best
	}
	if len(name) < 4 {
		return ""
	}
	for _, k := range known {
		if strings.HasPrefix(k, lname) {
			if best != "" {
				return "" // two of them: no guess
			}
			best = k
		}
	}
	return best
}

// editDistance is the optimal string alignment distance of a and b:
// insertions, deletions, substitutions and swaps of neighbours, one each.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return max(len(a), len(b)) // no key is that long: no guess, in bounded time
	}
	prev2 := make([]int, len(b)+1)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(b)]
}

func (w *tomlWalker) str(key string, v any) string {
	s, ok := v.(string)
	if !ok {
		w.fail(key, "%v: want a string", v)
	}
	return s
}

func (w *tomlWalker) boolean(key string, v any) bool {
	b, ok := v.(bool)
	if !ok {
		w.fail(key, "%v: want true or false", v)
	}
	return b
}

// integer takes a TOML integer, or a string of digits (older fly.toml
// files quote ports).
func (w *tomlWalker) integer(key string, v any) int {
	switch n := v.(type) {
	case int64:
		if n < math.MinInt32 || n > math.MaxInt32 {
			break
		}
		return int(n)
	case string:
		if i, err := strconv.Atoi(n); err == nil {
			return i
		}
	}
	w.fail(key, "%v: want a number", v)
	return 0
}

// port takes a port number, 1-65535.
func (w *tomlWalker) port(key string, v any) int {
	n := w.integer(key, v)
	if w.err == nil && (n < 1 || n > 65535) {
		w.fail(key, "%d is not a port number (1-65535)", n)
	}
	return n
}

// duration takes a Go duration string, or milliseconds.
func (w *tomlWalker) duration(key string, v any) caddy.Duration {
	switch d := v.(type) {
	case string:
		if dur, err := time.ParseDuration(d); err == nil && dur >= 0 {
			return caddy.Duration(dur)
		}
	case int64:
		if d >= 0 {
			return caddy.Duration(time.Duration(d) * time.Millisecond)
		}
	}
	w.fail(key, "%v: want a duration such as \"15s\" (or milliseconds)", v)
	return 0
}

func (w *tomlWalker) strings(key string, v any) []string {
	list, ok := v.([]any)
	if !ok {
		w.fail(key, "%v: want a list of strings", v)
		return nil
	}
	out := make([]string, 0, len(list))
	for i, e := range list {
		out = append(out, w.str(fmt.Sprintf("%s[%d]", key, i), e))
	}
	return out
}

func (w *tomlWalker) table(key string, v any) map[string]any {
	t, ok := v.(map[string]any)
	if !ok {
		w.fail(key, "want a table")
	}
	return t
}

// tablesOrOne is tables, and takes a single table as a list of one
// (single is then true), as flyctl reads services, ports and checks.
func (w *tomlWalker) tablesOrOne(key string, v any) (list []map[string]any, single bool) {
	if t, ok := v.(map[string]any); ok {
		return []map[string]any{t}, true
	}
	return w.tables(key, v), false
}

// each calls f with the path and table of each of key's tables, a single
// table included (its path is key, without an index).
func (w *tomlWalker) each(key string, v any, f func(path string, t map[string]any)) {
	list, single := w.tablesOrOne(key, v)
	for i, t := range list {
		path := fmt.Sprintf("%s[%d]", key, i)
		if single {
			path = key
		}
		f(path, t)
	}
}

// scale reads one of scaleKeys into sc.
func (w *tomlWalker) scale(key, name string, v any, sc *Scale) {
	switch name {
	case "auto_stop_machines":
		switch a := v.(type) {
		case bool:
			sc.AutoStopMachines = map[bool]string{true: "stop", false: "off"}[a]
		case string:
			switch a {
			case "off", "stop", "suspend":
				sc.AutoStopMachines = a
			default:
				w.fail(key, "%q: want off, stop, suspend, true or false", a)
			}
		default:
			w.fail(key, "%v: want off, stop, suspend, true or false", v)
		}
	case "auto_start_machines":
		b := w.boolean(key, v)
		sc.AutoStartMachines = &b
	case "min_machines_running":
		n := w.integer(key, v)
		sc.MinMachinesRunning = &n
	case "max_machines_running":
		n := w.integer(key, v)
		sc.MaxMachinesRunning = &n
	}
}

func (w *tomlWalker) tables(key string, v any) []map[string]any {
	list, ok := v.([]any)
	if !ok {
		w.fail(key, "want an array of tables ([[%s]])", key)
		return nil
	}
	out := make([]map[string]any, 0, len(list))
	for i, e := range list {
		out = append(out, w.table(fmt.Sprintf("%s[%d]", key, i), e))
	}
	return out
}

// edgePort maps Fly's web ports to the edge's.
func (w *tomlWalker) edgePort(p int) int {
	switch p {
	case 80:
		return w.web[0]
	case 443:
		return w.web[1]
	}
	return p
}

func (w *tomlWalker) httpService(path string, t map[string]any) walked {
	s := &routing.Service{Protocol: "tcp"}
	// flyctl writes [http tls] for 443 (HTTPService.ToService): the set [tls http]
	http := &routing.Port{Port: w.edgePort(80), Handlers: []string{"http"}}
	https := &routing.Port{Port: w.edgePort(443), Handlers: []string{"tls", "http"}}
	s.Ports = []*routing.Port{http, https}
	var sc *Scale
	for _, k := range sortedKeys(t) {
		key, v := path+"."+k, t[k]
		switch k {
		case "internal_port":
			s.InternalPort = w.port(key, v)
		case "force_https":
			http.ForceHTTPS = w.boolean(key, v)
		case "concurrency":
			s.Concurrency = w.concurrencyValue(key, v)
		case "tls_options":
			https.TLSOptions = w.tlsOptions(key, w.table(key, v))
		case "http_options":
			s.HTTPOptions = w.httpOptions(key, w.table(key, v))
		case "checks":
			for i, c := range w.tables(key, v) {
				s.Checks = append(s.Checks, w.check(fmt.Sprintf("%s[%d]", key, i), "http", c))
			}
		case "auto_stop_machines", "auto_start_machines", "min_machines_running", "max_machines_running":
			sc = cmp.Or(sc, new(Scale))
			w.scale(key, k, v, sc)
		case "machine_checks":
			w.machine(key)
		case "processes":
			s.Processes = w.serviceProcesses(key, v)
		default:
			w.ignore(key, httpServiceKeys)
		}
	}
	s.Processes = w.orDefaultGroup(s.Processes)
	return walked{path: path, svc: s, scale: sc, table: t}
}

// service reads one [[services]]. internal_port 0 (or none) and no
// ports are taken, as flyctl takes them (it writes such a block with
// an empty protocol): takePorts leaves the service out, as it serves nothing.
func (w *tomlWalker) service(path string, t map[string]any) walked {
	s := &routing.Service{Protocol: "tcp"}
	var sc *Scale
	for _, k := range sortedKeys(t) {
		key, v := path+"."+k, t[k]
		switch k {
		case "internal_port":
			if s.InternalPort = w.integer(key, v); s.InternalPort != 0 {
				s.InternalPort = w.port(key, v)
			}
		case "protocol":
			switch p := w.str(key, v); p {
			case "tcp", "udp":
				s.Protocol = p
			case "": // as flyctl writes a service it has no protocol for: tcp, the default
			default:
				if w.err == nil {
					w.fail(key, "%q (want tcp or udp)", p)
				}
			}
		case "ports":
			w.each(key, v, func(pp string, p map[string]any) {
				s.Ports = append(s.Ports, w.ports(pp, p, s)...)
			})
		case "concurrency":
			s.Concurrency = w.concurrencyValue(key, v)
		case "tcp_checks", "http_checks":
			typ := strings.TrimSuffix(k, "_checks")
			w.each(key, v, func(cp string, c map[string]any) {
				s.Checks = append(s.Checks, w.check(cp, typ, c))
			})
		case "auto_stop_machines", "auto_start_machines", "min_machines_running", "max_machines_running":
			sc = cmp.Or(sc, new(Scale))
			w.scale(key, k, v, sc)
		case "machine_checks", "script_checks": // the machines' (script_checks: Nomad's, of apps v1)
			w.machine(key)
		case "processes":
			s.Processes = w.serviceProcesses(key, v)
		default:
			w.ignore(key, serviceKeys)
		}
	}
	s.Processes = w.orDefaultGroup(s.Processes)
	if s.Protocol == "udp" {
		w.udpOnly(path, t, s)
	}
	return walked{path: path, svc: s, scale: sc, table: t}
}

// udpOnly leaves out of a udp service what only a tcp service does:
// handlers and port options, checks, http_options. Datagrams go to the
// machines as they came, and the edge checks no udp service; flyctl
// takes the file, so it is taken, with a warning for each key.
func (w *tomlWalker) udpOnly(path string, t map[string]any, s *routing.Service) {
	options := false
	for _, p := range s.Ports {
		if len(p.Handlers) > 0 || p.ForceHTTPS || p.TLSOptions != nil || p.ProxyProtoOptions != nil {
			options = true
			p.Handlers, p.ForceHTTPS, p.TLSOptions, p.ProxyProtoOptions = nil, false, nil, nil
		}
	}
	if options {
		w.dropIn(path+".ports", nil, "the ports of a udp service take no handlers and no options (datagrams go to the machines as they came)")
	}
	for _, k := range []string{"tcp_checks", "http_checks"} {
		if _, ok := t[k]; ok && len(s.Checks) > 0 {
			w.drop(path+"."+k, "the edge checks no udp service")
		}
	}
	s.Checks = nil
	if s.HTTPOptions != nil {
		w.dropIn(path+".ports", nil, "http_options: a udp service takes none")
		s.HTTPOptions = nil
	}
}

// ports reads one [[services.ports]]: one port, or a range of them.
func (w *tomlWalker) ports(path string, t map[string]any, s *routing.Service) []*routing.Port {
	tmpl := &routing.Port{}
	var port, start, end int
	for _, k := range sortedKeys(t) {
		key, v := path+"."+k, t[k]
		switch k {
		case "port":
			port = w.port(key, v)
		case "start_port":
			start = w.port(key, v)
		case "end_port":
			end = w.port(key, v)
		case "handlers":
			tmpl.Handlers = w.strings(key, v)
			if hs, err := routing.ParseHandlers(tmpl.Handlers); err != nil {
				w.fail(key, "%v", err)
			} else if len(tmpl.Handlers) > 0 {
				tmpl.Handlers = hs.List() // in the accepted order: [http tls] is [tls http]
			}
		case "force_https":
			tmpl.ForceHTTPS = w.boolean(key, v)
		case "tls_options":
			tmpl.TLSOptions = w.tlsOptions(key, w.table(key, v))
		case "http_options":
			o := w.httpOptions(key, w.table(key, v))
			if s.HTTPOptions != nil && w.err == nil {
				w.fail(key, "a second http_options in one service: flyedge keeps one per service")
			}
			s.HTTPOptions = o
		case "proxy_proto_options":
			tmpl.ProxyProtoOptions = w.proxyProto(key, w.table(key, v))
		default:
			w.ignore(key, portKeys)
		}
	}
	if w.err != nil {
		return nil
	}
	hs, _ := routing.ParseHandlers(tmpl.Handlers)
	if tmpl.ForceHTTPS && !hs.Has(routing.HandlerHTTP) {
		w.fail(path+".force_https", "needs the http handler (handlers are %v)", tmpl.Handlers)
		return nil
	}
	// options for a handler the port does not run do nothing: Fly.io
	// takes them, so the file is not refused, and the app does not get them
	if tmpl.TLSOptions != nil && !hs.Has(routing.HandlerTLS) {
		w.drop(path+".tls_options", fmt.Sprintf("the port has no tls handler (handlers are %v)", tmpl.Handlers))
		tmpl.TLSOptions = nil
	}
	if tmpl.ProxyProtoOptions != nil && !hs.Has(routing.HandlerProxyProto) {
		w.drop(path+".proxy_proto_options", fmt.Sprintf("the port has no proxy_proto handler (handlers are %v)", tmpl.Handlers))
		tmpl.ProxyProtoOptions = nil
	}
	switch {
	case port != 0 && (start != 0 || end != 0):
		w.fail(path+".start_port", "a port and a range: give port, or start_port and end_port")
	case port != 0:
		p := *tmpl
		p.Port = w.edgePort(port)
		return []*routing.Port{&p}
	case start == 0 || end == 0:
		w.fail(path+".port", "missing: give port, or start_port and end_port")
	case end < start:
		w.fail(path+".end_port", "%d is below start_port %d", end, start)
	default:
		out := make([]*routing.Port, 0, end-start+1)
		for n := start; n <= end; n++ {
			p := *tmpl
			p.Port = w.edgePort(n)
			out = append(out, &p)
		}
		return out
	}
	return nil
}

// concurrencyValue reads a concurrency table, or the string "soft,hard"
// of older files, which flyctl still converts to requests limits.
func (w *tomlWalker) concurrencyValue(key string, v any) *routing.Concurrency {
	str, ok := v.(string)
	if !ok {
		return w.concurrency(key, w.table(key, v))
	}
	soft, hard, ok := strings.Cut(str, ",")
	s, err1 := strconv.Atoi(strings.TrimSpace(soft))
	h, err2 := strconv.Atoi(strings.TrimSpace(hard))
	if !ok || err1 != nil || err2 != nil {
		w.fail(key, "%q: want a table, or \"<soft_limit>,<hard_limit>\" as older files have it", str)
		return nil
	}
	return w.concurrency(key, map[string]any{"type": "requests", "soft_limit": int64(s), "hard_limit": int64(h)})
}

func (w *tomlWalker) concurrency(path string, t map[string]any) *routing.Concurrency {
	c := new(routing.Concurrency)
	for _, k := range sortedKeys(t) {
		key, v := path+"."+k, t[k]
		switch k {
		case "type":
			c.Type = w.str(key, v)
			if c.Type != "requests" && c.Type != "connections" && w.err == nil {
				w.fail(key, "%q: want requests or connections", c.Type)
			}
		case "soft_limit":
			c.SoftLimit = w.integer(key, v)
		case "hard_limit":
			c.HardLimit = w.integer(key, v)
		default:
			w.ignore(key, concurrencyKeys)
		}
	}
	if w.err == nil && (c.SoftLimit < 0 || c.HardLimit < 0) {
		w.fail(path, "limits must not be negative")
	}
	if w.err == nil && c.HardLimit > 0 && c.SoftLimit > c.HardLimit {
		w.fail(path+".soft_limit", "%d is above hard_limit %d", c.SoftLimit, c.HardLimit)
	}
	return c
}

func (w *tomlWalker) tlsOptions(path string, t map[string]any) *routing.TLSOptions {
	o := new(routing.TLSOptions)
	for _, k := range sortedKeys(t) {
		key, v := path+"."+k, t[k]
		switch k {
		case "alpn":
			o.ALPN = w.strings(key, v)
		case "versions":
			o.Versions = w.strings(key, v)
			if _, _, err := routing.TLSVersionRange(o.Versions); err != nil && w.err == nil {
				w.fail(key, "%v", err)
			}
		case "default_self_signed":
			o.DefaultSelfSigned = w.boolean(key, v)
		default:
			w.ignore(key, tlsOptionKeys)
		}
	}
	return o
}

func (w *tomlWalker) httpOptions(path string, t map[string]any) *routing.HTTPOptions {
	o := new(routing.HTTPOptions)
	for _, k := range sortedKeys(t) {
		key, v := path+"."+k, t[k]
		switch k {
		case "h2_backend":
			o.H2Backend = w.boolean(key, v)
		case "response":
			o.Response = new(routing.HTTPResponse)
			rt := w.table(key, v)
			for _, rk := range sortedKeys(rt) {
				rkey, rv := key+"."+rk, rt[rk]
				switch rk {
				case "headers":
					o.Response.Headers = w.table(rkey, rv)
				case "pristine":
					o.Response.Pristine = w.boolean(rkey, rv)
				default:
					w.ignore(rkey, responseKeys)
				}
			}
		default:
			w.ignore(key, httpOptionKeys)
		}
	}
	return o
}

func (w *tomlWalker) proxyProto(path string, t map[string]any) *routing.ProxyProtoOptions {
	o := new(routing.ProxyProtoOptions)
	for _, k := range sortedKeys(t) {
		key, v := path+"."+k, t[k]
		switch k {
		case "version":
			o.Version = w.str(key, v)
			if _, err := routing.ProxyProtoVersion(o.Version); err != nil && w.err == nil {
				w.fail(key, "%v", err)
			}
		default:
			w.ignore(key, proxyProtoKeys)
		}
	}
	return o
}

// check reads a tcp or http check; typ is its type.
func (w *tomlWalker) check(path, typ string, t map[string]any) *routing.Check {
	c := &routing.Check{Type: typ}
	if w.checks++; w.lim.checks > 0 && w.checks > w.lim.checks {
		w.fail(path, "more than %d checks; at most %d in one app", w.lim.checks, w.lim.checks)
		return c
	}
	defer func() {
		if c.Protocol != "https" { // flyctl writes tls_skip_verify = false on http checks
			for k, set := range [2]bool{c.TLSSkipVerify, c.TLSServerName != ""} {
				if set {
					w.drop(path+"."+[2]string{"tls_skip_verify", "tls_server_name"}[k], "a check over plain http uses no TLS (protocol = \"https\" does)")
				}
			}
			c.TLSSkipVerify, c.TLSServerName = false, ""
		}
		if key, err := c.Request(); err != nil && w.err == nil {
			w.fail(path+"."+key, "%v", err)
		}
		if key, err := c.Floors(); err != nil && w.err == nil {
			hint := ""
			if _, ms := t[key].(int64); ms {
				hint = " (a number is milliseconds)"
			}
			w.fail(path+"."+key, "%v%s", err, hint)
		}
	}()
	for _, k := range sortedKeys(t) {
		key, v := path+"."+k, t[k]
		switch k {
		case "interval":
			c.Interval = w.duration(key, v)
		case "timeout":
			c.Timeout = w.duration(key, v)
		case "grace_period":
			c.GracePeriod = w.duration(key, v)
		case "path":
			if typ != "http" {
				w.ignore(key, checkKeys)
				continue
			}
			c.Path = w.str(key, v)
			if !strings.HasPrefix(c.Path, "/") && w.err == nil {
				w.fail(key, "%q: a path starts with /", c.Path)
			}
		case "method":
			if m, ok := v.(string); !ok || !strings.EqualFold(m, "get") {
				w.ignore(key, checkKeys) // the edge checks with GET
			}
		case "protocol":
			switch p, _ := v.(string); {
			case typ != "http":
				if p != "http" {
					w.ignore(key, checkKeys)
				}
			case strings.EqualFold(p, "https"):
				c.Protocol = "https"
			case !strings.EqualFold(p, "http"):
				w.ignore(key, checkKeys) // the edge checks over http or https
			}
		case "headers", "tls_skip_verify", "tls_server_name":
			if typ != "http" {
				w.ignore(key, checkKeys)
				continue
			}
			switch k {
			case "headers":
				h := w.table(key, v)
				for _, name := range sortedKeys(h) {
					if c.Headers == nil {
						c.Headers = make(map[string]string)
					}
					c.Headers[name] = w.str(key+"."+name, h[name])
				}
			case "tls_skip_verify":
				c.TLSSkipVerify = w.boolean(key, v)
			default:
				c.TLSServerName = w.str(key, v)
			}
		case "restart_limit": // Nomad's (apps v1): restarting a VM is the machines'
			w.machine(key)
		default:
			w.ignore(key, checkKeys)
		}
	}
	return c
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
