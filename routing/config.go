package routing

import (
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Application is one Fly-style app: a name, the hostnames it answers to,
// its public services and the machines that run it. It mirrors what
// fly.toml's [[services]] and [http_service] sections describe.
type Application struct {
	// Hostnames the app answers to besides <name>.<base_domain>.
	Hostnames []string `json:"hostnames,omitempty"`

	// Services the app exposes on the edge.
	Services []*Service `json:"services,omitempty"`

	// Machines that run the app.
	Machines []*Machine `json:"machines,omitempty"`

	// The organization the app belongs to: a fly-replay may send a
	// request to another app of the same organization only. An app
	// without one replays to itself only. At most 63 letters, digits,
	// '-', '_' and '.'.
	Org string `json:"org,omitempty"`
}

// Service is one public service of an app: connections arriving on one of
// its ports are handled by the port's handlers and proxied to
// machine.address:internal_port.
type Service struct {
	// The port the app listens on inside each machine. Required.
	InternalPort int `json:"internal_port,omitempty"`

	// Transport protocol: "tcp", or "udp", which the edge serves on the
	// app's dedicated IPv4 addresses only, as Fly.io does. A udp
	// service's ports take no handlers.
	// Default: tcp
	Protocol string `json:"protocol,omitempty"`

	// The edge ports of the service and their handlers.
	Ports []*Port `json:"ports,omitempty"`

	// Per-machine concurrency limits, counted in requests for HTTP
	// services and in connections otherwise.
	Concurrency *Concurrency `json:"concurrency,omitempty"`

	// Options for the HTTP handler of this service.
	HTTPOptions *HTTPOptions `json:"http_options,omitempty"`

	// Active health checks of the service on every machine, like
	// fly.toml's [[services.tcp_checks]] and [[services.http_checks]].
	// A machine that fails one receives no new traffic for the service
	// until it passes again.
	Checks []*Check `json:"checks,omitempty"`

	// The process groups whose machines serve the service, as fly.toml's
	// processes list: only a machine whose process_group is listed gets
	// its traffic. None means the default group, "app" (flyctl gives a
	// service without processes to the app's default group only).
	Processes []string `json:"processes,omitempty"`
}

// DefaultProcessGroup is the process group of a machine without one, and
// the group a service without processes is served by, as on Fly.io.
const DefaultProcessGroup = "app"

// Serves tells whether the service's traffic may go to a machine of the
// process group group ("" is DefaultProcessGroup).
func (s *Service) Serves(group string) bool {
	if group == "" {
		group = DefaultProcessGroup
	}
	if len(s.Processes) == 0 {
		return group == DefaultProcessGroup
	}
	return slices.Contains(s.Processes, group)
}

// Port is one edge port of a service.
type Port struct {
	// The port number on the edge. Required.
	Port int `json:"port,omitempty"`

	// Handlers applied to connections in order: any of "http", "tls",
	// "pg_tls", "proxy_proto". None means TCP pass-through.
	Handlers []string `json:"handlers,omitempty"`

	// Redirect plain-HTTP requests to HTTPS with 301. Only valid on a
	// port whose handlers include "http".
	ForceHTTPS bool `json:"force_https,omitempty"`

	// TLS options of a port with the "tls" handler (refused on a port
	// without it).
	TLSOptions *TLSOptions `json:"tls_options,omitempty"`

	// PROXY protocol options of a port with the "proxy_proto" handler
	// (refused on a port without it).
	ProxyProtoOptions *ProxyProtoOptions `json:"proxy_proto_options,omitempty"`

	handlers Handlers // Handlers, parsed by validate
}

// HandlerSet returns the port's handlers as validated when the config
// (or the app) was loaded.
func (p *Port) HandlerSet() Handlers { return p.handlers }

// TLSOptions are fly.toml's tls_options.
type TLSOptions struct {
	// ALPN protocols offered, e.g. ["h2", "http/1.1"].
	ALPN []string `json:"alpn,omitempty"`

	// TLS versions accepted: "TLSv1.2", "TLSv1.3".
	Versions []string `json:"versions,omitempty"`

	// Answer clients without SNI, or with a name the edge has no
	// certificate for, with a self-signed certificate.
	DefaultSelfSigned bool `json:"default_self_signed,omitempty"`
}

// ProxyProtoOptions are fly.toml's proxy_proto_options.
type ProxyProtoOptions struct {
	// PROXY protocol version: "v1" or "v2".
	// Default: v1
	Version string `json:"version,omitempty"`
}

// Concurrency limits the load on each machine, like fly.toml's
// services.concurrency.
type Concurrency struct {
	// What a machine's load counts, as in fly.toml: "requests" (HTTP
	// requests in flight; connections to the machine are reused) or
	// "connections" (open connections; on HTTP ports each request gets
	// a connection of its own, closed when its response ends). Layer 4
	// services count connections.
	// Default: connections
	Type string `json:"type,omitempty"`

	// At or above this load a machine is chosen only when no machine in
	// any region is below its soft limit.
	SoftLimit int `json:"soft_limit,omitempty"`

	// At this load a machine gets no new work; when every machine is at
	// it, a request waits up to the fly app's queue_timeout for a slot.
	HardLimit int `json:"hard_limit,omitempty"`
}

// HTTPOptions are fly.toml's http_service.http_options.
type HTTPOptions struct {
	// Speak HTTP/2 cleartext (h2c) to the machines instead of HTTP/1.1.
	// It takes effect where the service's requests are proxied by
	// reverse_proxy with `transport fly`.
	H2Backend bool `json:"h2_backend,omitempty"`

	// What the edge does to the service's responses, fly.toml's
	// http_options.response; fly_headers applies it.
	Response *HTTPResponse `json:"response,omitempty"`
}

// HTTPResponse is fly.toml's http_service.http_options.response.
type HTTPResponse struct {
	// Headers set on every response: a string, or a list of strings,
	// replaces the header's values (and adds the header when the
	// machine sent none); false removes the header.
	Headers map[string]any `json:"headers,omitempty"`

	// Add none of the edge's own headers (Fly-Request-Id, Via) to the
	// responses.
	Pristine bool `json:"pristine,omitempty"`

	ops []HeaderOp // Headers, parsed by validate
}

// HeaderOp is one change to a response's headers.
type HeaderOp struct {
	// Name is the header's canonical name.
	Name string
	// Values replace the header's values; none means remove it.
	Values []string
}

// HeaderOps returns the changes Headers asks for, in name order.
func (r *HTTPResponse) HeaderOps() []HeaderOp { return r.ops }

// parse checks Headers and turns it into ops.
func (r *HTTPResponse) parse(field string) error {
	r.ops = r.ops[:0]
	names := slices.Sorted(maps.Keys(r.Headers))
	for _, name := range names {
		if !headerNameRE.MatchString(name) {
			return fmt.Errorf("%s.headers: %q is not a header name", field, name)
		}
		op := HeaderOp{Name: http.CanonicalHeaderKey(name)}
		switch v := r.Headers[name].(type) {
		case string:
			op.Values = []string{v}
		case []any:
			for _, e := range v {
				s, ok := e.(string)
				if !ok {
					return fmt.Errorf("%s.headers.%s: %v: want strings", field, name, e)
				}
				op.Values = append(op.Values, s)
			}
			if len(op.Values) == 0 {
				return fmt.Errorf("%s.headers.%s: an empty list (remove a header with false)", field, name)
			}
		case []string:
			op.Values = v
		case bool:
			if v {
				return fmt.Errorf("%s.headers.%s: true (want a string, a list of strings, or false to remove)", field, name)
			}
		default:
			return fmt.Errorf("%s.headers.%s: %v (want a string, a list of strings, or false to remove)", field, name, v)
		}
		for _, val := range op.Values {
			if strings.ContainsAny(val, "\r\n\x00") {
				return fmt.Errorf("%s.headers.%s: a value with a line break or NUL", field, name)
			}
		}
		r.ops = append(r.ops, op)
	}
	return nil
}

// Check is an active health check run by the edge against every machine
// of a service.
type Check struct {
	// "tcp" (connect) or "http" (GET path, expect 2xx or 3xx).
	Type string `json:"type,omitempty"`

	// Time between checks.
	// Default: 10s
	Interval caddy.Duration `json:"interval,omitempty"`

	// How long one check may take.
	// Default: 2s
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// How long to wait after the config is loaded (or the machine
	// registered) before the first check; until then a machine the check
	// has not run on yet counts as passing it (a reload keeps results).
	// Default: 1s
	GracePeriod caddy.Duration `json:"grace_period,omitempty"`

	// Path of an http check.
	// Default: /
	Path string `json:"path,omitempty"`

	// Headers an http check sends, by name: a Host header sets the
	// request's host (the URL is the machine's address). At most
	// MaxCheckHeaders, of MaxCheckHeaderBytes together.
	Headers map[string]string `json:"headers,omitempty"`

	// "http" or "https": an https check speaks TLS to the machine and
	// verifies its certificate (for tls_server_name, else for the
	// machine's address) unless tls_skip_verify.
	// Default: http
	Protocol string `json:"protocol,omitempty"`

	// An https check accepts any certificate.
	TLSSkipVerify bool `json:"tls_skip_verify,omitempty"`

	// The name an https check sends in SNI and verifies the certificate
	// for.
	TLSServerName string `json:"tls_server_name,omitempty"`
}

// The bounds of one http check's headers.
const (
	// MaxCheckHeaders is how many headers one check may send.
	MaxCheckHeaders = 16

	// MaxCheckHeaderBytes is how many bytes the names and values of one
	// check's headers may have together.
	MaxCheckHeaderBytes = 4 << 10
)

// Request tells whether the request of c is one the edge sends: headers,
// protocol and TLS options only on http checks (TLS options only with
// https), headers of valid names, values without line breaks, within
// MaxCheckHeaders and MaxCheckHeaderBytes. It returns the key that is
// not ("headers", "headers.<name>", "protocol", ...) and why.
func (c *Check) Request() (key string, err error) {
	if c.Type != "http" {
		switch {
		case len(c.Headers) > 0:
			return "headers", errors.New("only http checks send headers")
		case c.Protocol != "":
			return "protocol", fmt.Errorf("%q: only http checks take a protocol", c.Protocol)
		case c.TLSSkipVerify:
			return "tls_skip_verify", errors.New("only https checks take TLS options")
		case c.TLSServerName != "":
			return "tls_server_name", errors.New("only https checks take TLS options")
		}
		return "", nil
	}
	if len(c.Headers) > MaxCheckHeaders {
		return "headers", fmt.Errorf("%d headers; at most %d", len(c.Headers), MaxCheckHeaders)
	}
	size := 0
	for _, name := range slices.Sorted(maps.Keys(c.Headers)) {
		val := c.Headers[name]
		if !headerNameRE.MatchString(name) {
			return "headers", fmt.Errorf("%q is not a header name", name)
		}
		if strings.ContainsAny(val, "\r\n\x00") {
			return "headers." + name, errors.New("a value with a line break or NUL")
		}
		if size += len(name) + len(val); size > MaxCheckHeaderBytes {
			return "headers", fmt.Errorf("more than %d bytes of names and values", MaxCheckHeaderBytes)
		}
	}
	switch c.Protocol {
	case "", "http":
		if c.TLSSkipVerify {
			return "tls_skip_verify", fmt.Errorf("only https checks take TLS options (protocol %q)", c.Protocol)
		}
		if c.TLSServerName != "" {
			return "tls_server_name", fmt.Errorf("only https checks take TLS options (protocol %q)", c.Protocol)
		}
	case "https":
		if n := c.TLSServerName; n != "" && !ValidHostname(n, false) {
			return "tls_server_name", fmt.Errorf("%q is not a lower-case host name", n)
		}
	default:
		return "protocol", fmt.Errorf("%q (want http or https)", c.Protocol)
	}
	return "", nil
}

// The bounds of the active health checks one app may ask for, so that
// one tenant's checks cannot take the edge's CPU. Fly.io documents no
// minimum (its generated files use 10s to 15s intervals and timeouts
// of 1s to 5s); these floors keep every file seen in the wild. The rate
// of all the probes of an edge is bounded too (see health.go).
const (
	// MinCheckInterval is the shortest interval a check may have: a
	// machine is checked at most once a second by each check.
	MinCheckInterval = time.Second

	// MinCheckTimeout is the shortest timeout a check may have: below
	// it a check measures the network's jitter, not the machine.
	MinCheckTimeout = 100 * time.Millisecond

	// MaxChecksPerApp is how many checks all the services of one app
	// may have together.
	MaxChecksPerApp = 20
)

// Floors tells whether c's interval and timeout are at or above
// MinCheckInterval and MinCheckTimeout (unset takes the default): it
// returns the key that is not ("interval" or "timeout") and why.
func (c *Check) Floors() (key string, err error) {
	if d := time.Duration(c.Interval); d != 0 && d < MinCheckInterval {
		return "interval", fmt.Errorf("%v is below the minimum of %v", d, MinCheckInterval)
	}
	if d := time.Duration(c.Timeout); d != 0 && d < MinCheckTimeout {
		return "timeout", fmt.Errorf("%v is below the minimum of %v", d, MinCheckTimeout)
	}
	return "", nil
}

// Machine is one instance of an app.
type Machine struct {
	// 14 lower-case hexadecimal characters, as Fly.io's machine IDs.
	ID string `json:"id,omitempty"`

	// Region code the machine runs in; must be in the region catalog.
	Region string `json:"region,omitempty"`

	// Host name or IP address the machine is reachable on from the edge.
	Address string `json:"address,omitempty"`

	// "started" machines receive traffic; "stopped" ones do not.
	// Default: started
	State string `json:"state,omitempty"`

	// The process group the machine runs, as Fly.io's
	// fly_process_group: it serves the services that list the group in
	// their processes. Letters, digits, '-' and '_', at most 63.
	// Default: app
	ProcessGroup string `json:"process_group,omitempty"`
}

// Group returns the machine's process group, DefaultProcessGroup when
// it has none (a machine stored before process groups has none).
func (m *Machine) Group() string {
	if m.ProcessGroup == "" {
		return DefaultProcessGroup
	}
	return m.ProcessGroup
}

var (
	appNameRE    = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	orgRE        = regexp.MustCompile(`^[A-Za-z0-9._-]{1,63}$`)
	machineIDRE  = regexp.MustCompile(`^[0-9a-f]{14}$`)
	viaRE        = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,64}$`)
	headerNameRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
	processRE    = regexp.MustCompile(`^[A-Za-z0-9_-]{1,63}$`)
	hostnameRE   = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)
)

// ValidProcessGroup tells whether name is a process group name: letters,
// digits, '-' and '_', at most 63.
func ValidProcessGroup(name string) bool { return processRE.MatchString(name) }

// ValidHostname tells whether name is a lower-case host name of at most
// 253 characters; with wildcard, "*." and a host name (a wildcard for
// the first label, the only form the lookups know) is valid too.
func ValidHostname(name string, wildcard bool) bool {
	if rest, ok := strings.CutPrefix(name, "*."); ok && wildcard {
		name = rest
	}
	return len(name) <= 253 && hostnameRE.MatchString(name)
}

// checkInput checks what an app's config must be when it comes in (the
// config, the admin API) beyond what validate checks: rules added after
// apps were stored without them, so validate, which also reads what the
// store holds, leaves them out (an app stored before them still loads).
// It runs after validate, which parses the ports' handlers.
func (a *Application) checkInput(name string) error {
	if a.Org != "" && !orgRE.MatchString(a.Org) {
		if len(a.Org) > 63 {
			return fmt.Errorf("apps.%s.org: %d bytes (want at most 63 letters, digits, '-', '_' or '.')", name, len(a.Org))
		}
		return fmt.Errorf("apps.%s.org: %q (want at most 63 letters, digits, '-', '_' or '.')", name, a.Org)
	}
	total, seen := 0, 0
	for _, s := range a.Services {
		total += len(s.Checks)
	}
	for si, s := range a.Services {
		sf := fmt.Sprintf("apps.%s.services[%d]", name, si)
		if seen += len(s.Checks); seen > MaxChecksPerApp {
			return fmt.Errorf("%s.checks: %d checks in the app; at most %d per app", sf, total, MaxChecksPerApp)
		}
		for ci, c := range s.Checks {
			if key, err := c.Floors(); err != nil {
				return fmt.Errorf("%s.checks[%d].%s: %w", sf, ci, key, err)
			}
		}
		for pi, p := range s.Ports {
			pf := fmt.Sprintf("apps.%s.services[%d].ports[%d]", name, si, pi)
			if p.TLSOptions != nil && !p.handlers.Has(HandlerTLS) {
				return fmt.Errorf("%s.tls_options: port %d has handlers %v; tls_options needs the tls handler", pf, p.Port, p.Handlers)
			}
			if p.ProxyProtoOptions != nil && !p.handlers.Has(HandlerProxyProto) {
				return fmt.Errorf("%s.proxy_proto_options: port %d has handlers %v; proxy_proto_options needs the proxy_proto handler", pf, p.Port, p.Handlers)
			}
		}
	}
	return nil
}

// validate checks an app's config; catalog is the effective region catalog.
func (a *Application) validate(name string, catalog map[string]Region) error {
	if !appNameRE.MatchString(name) {
		return fmt.Errorf("apps: %q: name must be a DNS label (lower-case letters, digits and '-')", name)
	}
	for i, h := range a.Hostnames {
		if !ValidHostname(h, true) {
			return fmt.Errorf("apps.%s.hostnames[%d]: %q is not a valid lower-case host name", name, i, h)
		}
	}
	edgePorts := map[int]bool{}
	for si, s := range a.Services {
		field := fmt.Sprintf("apps.%s.services[%d]", name, si)
		if err := s.validate(field, edgePorts); err != nil {
			return err
		}
	}
	for mi, m := range a.Machines {
		field := fmt.Sprintf("apps.%s.machines[%d]", name, mi)
		if err := m.validate(field, catalog); err != nil {
			return err
		}
	}
	return nil
}

func (s *Service) validate(field string, edgePorts map[int]bool) error {
	if s == nil {
		return fmt.Errorf("%s: null (want a service)", field)
	}
	if s.InternalPort < 1 || s.InternalPort > 65535 {
		return fmt.Errorf("%s.internal_port: %d is not a port number (1-65535)", field, s.InternalPort)
	}
	if s.Protocol != "" && s.Protocol != "tcp" && s.Protocol != "udp" {
		return fmt.Errorf("%s.protocol: %q (want tcp or udp)", field, s.Protocol)
	}
	udp := s.Protocol == "udp"
	if len(s.Ports) == 0 {
		return fmt.Errorf("%s.ports: a service needs at least one port", field)
	}
	for pi, p := range s.Ports {
		pf := fmt.Sprintf("%s.ports[%d]", field, pi)
		if p == nil {
			return fmt.Errorf("%s: null (want a port)", pf)
		}
		if p.Port < 1 || p.Port > 65535 {
			return fmt.Errorf("%s.port: %d is not a port number (1-65535)", pf, p.Port)
		}
		key := p.Port // the port's number in its protocol's range of keys
		if udp {
			key += 1 << 16
		}
		if edgePorts[key] {
			proto := ""
			if udp {
				proto = "/udp"
			}
			return fmt.Errorf("%s.port: %d%s is already used by another service of this app", pf, p.Port, proto)
		}
		edgePorts[key] = true
		if udp {
			if len(p.Handlers) > 0 || p.ForceHTTPS || p.TLSOptions != nil || p.ProxyProtoOptions != nil {
				return fmt.Errorf("%s: port %d of a udp service takes no handlers and no options (datagrams go to the machines as they came)", pf, p.Port)
			}
			continue
		}
		hs, err := ParseHandlers(p.Handlers)
		if err != nil {
			return fmt.Errorf("%s.handlers: port %d: %w", pf, p.Port, err)
		}
		p.handlers = hs
		if p.ForceHTTPS && !hs.Has(HandlerHTTP) {
			return fmt.Errorf("%s.force_https: port %d has handlers %v; force_https needs the http handler", pf, p.Port, p.Handlers)
		}
		if p.ProxyProtoOptions != nil {
			if _, err := ProxyProtoVersion(p.ProxyProtoOptions.Version); err != nil {
				return fmt.Errorf("%s.proxy_proto_options.version: %w", pf, err)
			}
		}
		if p.TLSOptions != nil {
			if _, _, err := TLSVersionRange(p.TLSOptions.Versions); err != nil {
				return fmt.Errorf("%s.tls_options.versions: %w", pf, err)
			}
		}
	}
	if o := s.HTTPOptions; o != nil && o.Response != nil {
		if err := o.Response.parse(field + ".http_options.response"); err != nil {
			return err
		}
	}
	if c := s.Concurrency; c != nil {
		if c.Type != "" && c.Type != "requests" && c.Type != "connections" {
			return fmt.Errorf("%s.concurrency.type: %q (want requests or connections)", field, c.Type)
		}
		if c.SoftLimit < 0 || c.HardLimit < 0 {
			return fmt.Errorf("%s.concurrency: limits must not be negative", field)
		}
		if c.HardLimit > 0 && c.SoftLimit > c.HardLimit {
			return fmt.Errorf("%s.concurrency.soft_limit: %d is above hard_limit %d", field, c.SoftLimit, c.HardLimit)
		}
	}
	for i, g := range s.Processes {
		if !processRE.MatchString(g) {
			return fmt.Errorf("%s.processes[%d]: %q is not a process group name (at most 63 letters, digits, '-' or '_')", field, i, g)
		}
	}
	if udp && len(s.Checks) > 0 {
		return fmt.Errorf("%s.checks: a udp service takes no checks", field)
	}
	if udp && s.HTTPOptions != nil {
		return fmt.Errorf("%s.http_options: a udp service takes no http_options", field)
	}
	for ci, c := range s.Checks {
		cf := fmt.Sprintf("%s.checks[%d]", field, ci)
		if c == nil {
			return fmt.Errorf("%s: null (want a check)", cf)
		}
		if c.Type != "tcp" && c.Type != "http" {
			return fmt.Errorf("%s.type: %q (want tcp or http)", cf, c.Type)
		}
		if c.Interval < 0 || c.Timeout < 0 || c.GracePeriod < 0 {
			return fmt.Errorf("%s: interval, timeout and grace_period must not be negative", cf)
		}
		if c.Path != "" && (c.Type != "http" || !strings.HasPrefix(c.Path, "/")) {
			return fmt.Errorf("%s.path: %q: only http checks take a path, and it must start with /", cf, c.Path)
		}
		if key, err := c.Request(); err != nil {
			return fmt.Errorf("%s.%s: %w", cf, key, err)
		}
	}
	return nil
}

func (m *Machine) validate(field string, catalog map[string]Region) error {
	if m == nil {
		return fmt.Errorf("%s: null (want a machine)", field)
	}
	if !machineIDRE.MatchString(m.ID) {
		return fmt.Errorf("%s.id: %q must be 14 lower-case hexadecimal characters", field, m.ID)
	}
	if _, ok := catalog[m.Region]; !ok {
		return fmt.Errorf("%s.region: %q (machine %s) is not in the region catalog", field, m.Region, m.ID)
	}
	if m.Address == "" {
		return fmt.Errorf("%s.address: machine %s has no address", field, m.ID)
	}
	if _, err := netip.ParseAddr(m.Address); err != nil && !hostnameRE.MatchString(strings.ToLower(m.Address)) {
		return fmt.Errorf("%s.address: %q (machine %s) is neither an IP address nor a host name", field, m.Address, m.ID)
	}
	switch m.State {
	case "", "started", "stopped":
	default:
		return fmt.Errorf("%s.state: %q (machine %s) must be started or stopped", field, m.State, m.ID)
	}
	if m.ProcessGroup != "" && !processRE.MatchString(m.ProcessGroup) {
		return fmt.Errorf("%s.process_group: %q (machine %s) is not a process group name (at most 63 letters, digits, '-' or '_')", field, m.ProcessGroup, m.ID)
	}
	return nil
}

// ProxyProtoVersion maps Fly's PROXY protocol version names "v1" and "v2"
// to 1 and 2, and "" to 0 (unset).
func ProxyProtoVersion(name string) (byte, error) {
	switch name {
	case "":
		return 0, nil
	case "v1":
		return 1, nil
	case "v2":
		return 2, nil
	}
	return 0, fmt.Errorf("%q: want v1 or v2", name)
}

// TLSVersionRange turns Fly's TLS version names ("TLSv1.2", "TLSv1.3")
// into the lowest and highest crypto/tls version; none means both.
func TLSVersionRange(names []string) (lo, hi uint16, err error) {
	if len(names) == 0 {
		return tls.VersionTLS12, tls.VersionTLS13, nil
	}
	lo, hi = tls.VersionTLS13, tls.VersionTLS12
	for _, n := range names {
		var v uint16
		switch n {
		case "TLSv1.2":
			v = tls.VersionTLS12
		case "TLSv1.3":
			v = tls.VersionTLS13
		default:
			return 0, 0, fmt.Errorf("%q (want TLSv1.2 or TLSv1.3)", n)
		}
		lo, hi = min(lo, v), max(hi, v)
	}
	return lo, hi, nil
}
