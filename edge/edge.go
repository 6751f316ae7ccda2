package edge

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddypki"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/flyedge/caddy-flyedge/flyhandlers"
	"github.com/flyedge/caddy-flyedge/routing"
)

func init() {
	caddy.RegisterModule(new(Edge))
}

// Edge is the `fly_edge` Caddy app: it listens on the edge's ports and
// gives every connection what the port of its app asks for, whatever the
// port, so the user writes no layer 4 server, no listener wrapper and no
// route per port. It loads the fly_ips app, whose state (addresses, host
// names, machines) routing reads.
//
// Each connection is matched by one caddy-l4 route, whose fly_app
// matcher (edge mode) resolves it once (routing.App.Resolve: the address
// it arrived on, and on a shared address the TLS server name, from the
// ClientHello it reads once), and one switch (dispatch) runs the
// handlers of the app's port, provisioned once with the edge:
//
//   - none: fly_proxy, bytes as they came;
//   - tls, tls proxy_proto, pg_tls, proxy_proto: fly_tls, proxy_proto
//     and pg_tls as listed, then fly_proxy;
//   - http: the connection goes to the HTTP server bound to fly/<http>
//     (`bind fly/edge` in a site block);
//   - tls http: fly_tls terminates TLS with the port's tls_options, and
//     the TLS connection goes to that HTTP server, which speaks HTTP/1.1
//     or HTTP/2 over it.
//
// On a shared address a PostgreSQL SSLRequest goes to pg_tls, which
// reads the server name in the TLS handshake that follows. An HTTP
// request to a shared address goes to the HTTP server, which finds the
// app by the Host header (TLS for a name no app answers to gets an
// unrecognized_name alert instead); anything else there is closed, as a
// connection to an address no app holds is, at once and unread (default
// deny). TLS handshakes the edge terminates take at most
// handshake_timeout. Certificates come from
// Caddy's tls app: the edge adds an on-demand automation policy with its
// issuers, so the certificate of a name is obtained at its first
// handshake (only names the resolver routes get that far).
type Edge struct {
	// The edge's TCP ports: numbers or ranges ("80", "10000-10999"). The
	// edge listens on each, on every address, and serves there every
	// service port of every app, whatever its handlers. An app with a
	// service on another port is refused.
	Ports []string `json:"ports,omitempty"`

	// The edge's UDP ports, as ports: the ports udp services may use.
	// The edge serves UDP on apps' dedicated IPv4 addresses only.
	UDPPorts []string `json:"udp_ports,omitempty"`

	// The name of the HTTP server's listener: a site block with `bind
	// fly/<http>` serves the edge's HTTP.
	// Default: edge
	HTTP string `json:"http,omitempty"`

	// Issuers of the certificates the edge terminates TLS with, as in a
	// tls automation policy (for example {"module": "internal"}).
	// Default: Caddy's default issuers (ACME)
	IssuersRaw []json.RawMessage `json:"issuers,omitempty" caddy:"namespace=tls.issuance inline_key=module"`

	// How long the edge may wait for the bytes that decide a
	// connection's app (a TLS ClientHello on a shared address).
	// Default: 3s
	MatchingTimeout caddy.Duration `json:"matching_timeout,omitempty"`

	// How long a client may take over a TLS handshake the edge
	// terminates (fly_tls, for tls and tls http ports; pg_tls, from the
	// SSLRequest), counted once the connection's app is known (so on a
	// shared address after the matching timeout's ClientHello): a client
	// that has not completed it by then is closed. The HTTP site bound to
	// fly/<http> should bound the reading of a request's header the same
	// way (its server's read_header timeout; see the README's site).
	// Default: 10s
	HandshakeTimeout caddy.Duration `json:"handshake_timeout,omitempty"`

	// How long the edge waits for an HTTP server on fly/<http> before it
	// closes an HTTP connection (a config whose site block is missing).
	// Default: 5s
	HandOffTimeout caddy.Duration `json:"hand_off_timeout,omitempty"`

	// How long a UDP flow lasts with no datagram either way; the next
	// datagram of the client starts a new one.
	// Default: 30s
	UDPIdleTimeout caddy.Duration `json:"udp_idle_timeout,omitempty"`

	// Let other processes listen on the edge's ports too, such as the
	// other edges of a fleet on one host (scripts/fleet-demo.sh); the
	// kernel spreads the connections over them. Without it the edge
	// refuses to start when another process listens on one of its ports:
	// Caddy binds with SO_REUSEPORT, so the bind alone would not fail,
	// and the two would split the connections in silence.
	// Default: false
	SharePorts bool `json:"share_ports,omitempty"`

	// The most TCP connections the edge holds at once, over all its
	// ports; beyond it a new connection is closed as soon as it is
	// accepted. Default: from the process's open-file limit: what is
	// left after an eighth of it (at least 256 descriptors, for the
	// admin endpoint, health checks, storage and logs), the listening
	// sockets and the UDP flows' share, two descriptors a connection
	// (the client's and the machine's).
	MaxConnections int `json:"max_connections,omitempty"`

	// The most TCP connections one client address (IPv6: its /64)
	// holds at once. Default: a sixteenth of max_connections, at least
	// 64.
	MaxConnectionsPerClient int `json:"max_connections_per_client,omitempty"`

	// The most UDP flows the edge holds at once, over all its UDP ports
	// and apps (each has its socket towards a machine); beyond it a new
	// flow's datagrams are dropped. Default: a quarter of what the
	// open-file limit leaves (see max_connections).
	MaxUDPFlows int `json:"max_udp_flows,omitempty"`

	conns      *connLimits
	refusals   atomic.Int64 // connections refused since the last warning
	lastWarned atomic.Int64 // when that was, in Unix nanoseconds
	addrs      []caddy.NetworkAddress
	ports      map[int]bool
	udpAddrs   []caddy.NetworkAddress
	udpPorts   map[int]bool
	udp        *flyhandlers.UDP
	ctx        caddy.Context
	handler    layer4.Handler
	listeners  []net.Listener
	wg         sync.WaitGroup
	logger     *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Edge) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "fly_edge",
		New: func() caddy.Module { return new(Edge) },
	}
}

// setPorts parses the edge's TCP and UDP ports: numbers or ranges
// ("80", "10000-10999"), each listened on with every host address.
func (e *Edge) setPorts() error {
	if len(e.Ports) == 0 && len(e.UDPPorts) == 0 {
		return errors.New("ports: the edge has no ports to listen on; list them (ports, udp_ports)")
	}
	var err error
	if e.addrs, e.ports, err = parsePorts("ports", e.Ports); err != nil {
		return err
	}
	if e.udpAddrs, e.udpPorts, err = parsePorts("udp_ports", e.UDPPorts); err != nil {
		return err
	}
	if len(e.udpPorts) > 1024 {
		return fmt.Errorf("udp_ports: %d ports; at most 1024 (the edge holds a socket and a goroutine for each)", len(e.udpPorts))
	}
	if e.UDPIdleTimeout < 0 {
		return errors.New("udp_idle_timeout must not be negative")
	}
	if e.UDPIdleTimeout == 0 {
		e.UDPIdleTimeout = caddy.Duration(flyhandlers.DefaultUDPIdleTimeout)
	}
	if e.HTTP == "" {
		e.HTTP = "edge"
	}
	if strings.ContainsAny(e.HTTP, "/: ") {
		return fmt.Errorf("http: %q is not a listener name (letters, digits, - and _)", e.HTTP)
	}
	if e.MatchingTimeout == 0 {
		e.MatchingTimeout = caddy.Duration(layer4.MatchingTimeoutDefault)
	}
	if e.HandOffTimeout == 0 {
		e.HandOffTimeout = caddy.Duration(5 * time.Second)
	}
	if e.HandshakeTimeout == 0 {
		e.HandshakeTimeout = caddy.Duration(DefaultHandshakeTimeout)
	}
	if e.MatchingTimeout < 0 || e.HandOffTimeout < 0 || e.HandshakeTimeout < 0 {
		return errors.New("matching_timeout, handshake_timeout and hand_off_timeout must not be negative")
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"max_connections", e.MaxConnections}, {"max_connections_per_client", e.MaxConnectionsPerClient}, {"max_udp_flows", e.MaxUDPFlows}} {
		if f.v < 0 {
			return fmt.Errorf("%s: %d must not be negative", f.name, f.v)
		}
	}
	return nil
}

// DefaultHandshakeTimeout is how long a client may take over a TLS
// handshake the edge terminates, unless handshake_timeout says otherwise.
const DefaultHandshakeTimeout = 10 * time.Second

// parsePorts parses a list of ports and ranges (field names it in errors).
func parsePorts(field string, ports []string) ([]caddy.NetworkAddress, map[int]bool, error) {
	set := make(map[int]bool)
	var addrs []caddy.NetworkAddress
	for i, p := range ports {
		na, err := caddy.ParseNetworkAddress(":" + p)
		if err != nil || na.StartPort < 1 || na.EndPort > 65535 {
			return nil, nil, fmt.Errorf("%s[%d]: %q is not a port number or a range of them (1-65535)", field, i, p)
		}
		for n := na.StartPort; n <= na.EndPort; n++ {
			if set[int(n)] {
				return nil, nil, fmt.Errorf("%s[%d]: port %d is listed twice", field, i, n)
			}
			set[int(n)] = true
		}
		addrs = append(addrs, na)
	}
	return addrs, set, nil
}

// Serves tells whether port is one of the edge's TCP ports.
func (e *Edge) Serves(port int) bool { return e.ports[port] }

// ServesUDP tells whether port is one of the edge's UDP ports.
func (e *Edge) ServesUDP(port int) bool { return e.udpPorts[port] }

// PortList returns the edge's ports as given, for messages.
func (e *Edge) PortList() string {
	list := portList(e.addrs)
	if len(e.udpAddrs) > 0 {
		list += "; udp_ports: " + portList(e.udpAddrs)
	}
	return list
}

func portList(addrs []caddy.NetworkAddress) string {
	parts := make([]string, len(addrs))
	for i, na := range addrs {
		parts[i] = strconv.Itoa(int(na.StartPort))
		if na.EndPort != na.StartPort {
			parts[i] += "-" + strconv.Itoa(int(na.EndPort))
		}
	}
	return strings.Join(parts, " ")
}

// edgeRoute is the edge's one layer 4 route, as JSON: a fly_app matcher
// in its edge mode, which reads what decides the connection's route
// (the ClientHello on a shared address, or an SSLRequest) and resolves
// it once, and no handler: caddy-l4 then passes every connection, taken
// or not, to the handler it compiles the route with (dispatch). The
// route is there for caddy-l4's matching loop (prefetch and timeout).
const edgeRoute = `[{"match": [{"fly_app": {"edge": true}}]}]`

// Provision parses the ports, tells the fly app which ones the edge
// serves (and checks that the config's apps use no other), loads the
// fly_ips app, and sets up the route, the handlers and the certificates'
// automation policy (before the tls app starts, which reads its policies
// from then on).
func (e *Edge) Provision(ctx caddy.Context) error {
	e.ctx = ctx
	e.logger = ctx.Logger().Named("edge")
	if err := e.setPorts(); err != nil {
		return err
	}
	e.setLimits(fileLimit())
	e.conns = newConnLimits(e.MaxConnections, e.MaxConnectionsPerClient)
	routing.SetMachineConnLimit(e.MaxConnections)
	fly, err := routing.FromContext(ctx)
	if err != nil {
		return err
	}
	if err := fly.ServePorts(e.Serves, e.ServesUDP, "fly_edge ports: "+e.PortList()); err != nil {
		return err
	}
	names := fly.AppNames()
	slices.Sort(names)
	for _, name := range names {
		if fly.AppSource(name) != routing.SourceConfig {
			continue
		}
		if err := fly.CheckPorts(name, fly.AppConfig(name)); err != nil {
			return err
		}
	}
	// the state routing reads: addresses, host names, machines (when
	// fly_ips loads the edge, from its deprecated fields, Caddy gives
	// back the fly_ips being provisioned)
	if _, err := ctx.App("fly_ips"); err != nil {
		return fmt.Errorf("loading the fly_ips app: %w", err)
	}
	var routes layer4.RouteList
	if err := json.Unmarshal([]byte(edgeRoute), &routes); err != nil {
		return err
	}
	if err := routes.Provision(ctx); err != nil {
		return fmt.Errorf("edge route: %w", err)
	}
	d, err := newDispatch(ctx, time.Duration(e.HandshakeTimeout))
	if err != nil {
		return err
	}
	if len(e.ports) > 0 { // a UDP-only edge terminates no TLS
		if err := e.addAutomationPolicy(ctx); err != nil {
			return err
		}
	}
	routesLogger := e.logger.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return goneClients{c} }))
	e.handler = routes.Compile(routesLogger, time.Duration(e.MatchingTimeout), d)
	return nil
}

// Start listens on the edge's ports, once it knows that no other process
// serves the admin endpoint or (unless share_ports) listens on them.
func (e *Edge) Start() error {
	if err := e.checkAdmin(e.ctx); err != nil {
		return err
	}
	if !e.SharePorts {
		if err := e.checkPortsFree(); err != nil {
			return err
		}
	}
	for _, na := range e.addrs {
		for offset := range na.PortRangeSize() {
			ln, err := na.Listen(e.ctx, offset, net.ListenConfig{})
			if err != nil {
				_ = e.Stop()
				return fmt.Errorf("listening on %s: %w", na.JoinHostPort(offset), err)
			}
			l := ln.(net.Listener)
			e.listeners = append(e.listeners, l)
			e.wg.Go(func() { e.accept(l, e.handler) })
		}
	}
	if err := e.startUDP(); err != nil {
		_ = e.Stop()
		return err
	}
	e.logger.Info("edge listening", zap.String("ports", e.PortList()), zap.String("http", edgeNetwork+"/"+e.HTTP))
	e.warnHeaderTimeout()
	return nil
}

// warnHeaderTimeout warns when the HTTP server on fly/<http> gives a
// request's header longer than the edge gives a TLS handshake: a client
// that trickles its header in holds its connection that long (Caddy's
// default is a minute). The edge does not change another app's server;
// the site's server says it (read_header_timeout; in a Caddyfile, the
// servers global option's timeouts { read_header }).
func (e *Edge) warnHeaderTimeout() {
	app, err := e.ctx.AppIfConfigured("http")
	if err != nil {
		return
	}
	httpApp, ok := app.(*caddyhttp.App)
	if !ok {
		return
	}
	for name, srv := range httpApp.Servers {
		for _, l := range srv.Listen {
			na, err := caddy.ParseNetworkAddress(l)
			if err != nil || na.Network != edgeNetwork || na.Host != e.HTTP {
				continue
			}
			if d := time.Duration(srv.ReadHeaderTimeout); d > time.Duration(e.HandshakeTimeout) {
				e.logger.Warn("the edge's HTTP server reads a request's header for longer than the edge gives a TLS handshake: a slow client holds its connection that long; set its read_header timeout (Caddyfile: servers "+l+" { timeouts { read_header "+time.Duration(e.HandshakeTimeout).String()+" } })",
					zap.String("server", name), zap.Duration("read_header_timeout", d), zap.Duration("handshake_timeout", time.Duration(e.HandshakeTimeout)))
			}
		}
	}
}

// checkPortsFree fails when another process listens on one of the edge's
// ports, on any address.
func (e *Edge) checkPortsFree() error {
	for _, p := range []struct {
		network, name string
		ports         map[int]bool
	}{{"tcp", "port", e.ports}, {"udp", "udp port", e.udpPorts}} {
		if len(p.ports) == 0 {
			continue
		}
		foreign, err := ForeignListeners(p.network, netip.IPv6Unspecified(), func(n int) bool { return p.ports[n] })
		if err != nil {
			e.logger.Warn("cannot tell whether another process listens on the edge's ports", zap.Error(err))
			continue
		}
		if len(foreign) == 0 {
			continue
		}
		var ports []int
		for _, f := range foreign {
			ports = append(ports, int(f.Addr.Port()))
		}
		slices.Sort(ports)
		ports = slices.Compact(ports)
		list := make([]string, 0, 6)
		for i, n := range ports {
			if i == 5 {
				list = append(list, fmt.Sprintf("%d more", len(ports)-5))
				break
			}
			list = append(list, strconv.Itoa(n))
		}
		what := fmt.Sprintf("edge %s %s is", p.name, list[0])
		if len(ports) > 1 {
			what = fmt.Sprintf("edge %ss %s are", p.name, strings.Join(list, ", "))
		}
		return fmt.Errorf("%s already served by %s; stop it first, or set share_ports to share them on purpose", what, foreign[0].Process())
	}
	return nil
}

// addAutomationPolicy gives the tls app an on-demand policy with the
// edge's issuers, just before its first catch-all policy (the one Caddy's
// automatic HTTPS adds, say): policies for named hosts keep their names.
func (e *Edge) addAutomationPolicy(ctx caddy.Context) error {
	app, err := ctx.App("tls")
	if err != nil {
		return fmt.Errorf("loading the tls app: %w", err)
	}
	tlsApp := app.(*caddytls.TLS)
	ap := &caddytls.AutomationPolicy{OnDemand: true}
	if e.IssuersRaw != nil {
		vals, err := ctx.LoadModule(e, "IssuersRaw")
		if err != nil {
			return fmt.Errorf("loading the edge's issuers: %w", err)
		}
		for _, v := range vals.([]any) {
			if err := keepTrustStore(ctx, v); err != nil {
				return err
			}
			ap.Issuers = append(ap.Issuers, v.(certmagic.Issuer))
		}
	}
	if err := ap.Provision(tlsApp); err != nil {
		return fmt.Errorf("the edge's certificate automation: %w", err)
	}
	if tlsApp.Automation == nil {
		tlsApp.Automation = new(caddytls.AutomationConfig)
	}
	// the tls app has not started: nothing reads its policies yet
	old := tlsApp.Automation.Policies
	i := slices.IndexFunc(old, func(p *caddytls.AutomationPolicy) bool { return len(p.SubjectsRaw) == 0 })
	if i < 0 {
		i = len(old)
	}
	tlsApp.Automation.Policies = slices.Concat(old[:i:i], []*caddytls.AutomationPolicy{ap}, old[i:])
	return nil
}

// keepTrustStore keeps the edge from installing the root of the CA an
// internal issuer signs with into the host's trust stores: Caddy does
// that at start unless told not to, which suits a laptop and not a server
// that serves other people's names. A CA whose install_trust the pki app
// sets explicitly keeps it; `caddy trust` installs the root by hand.
func keepTrustStore(ctx caddy.Context, issuer any) error {
	iss, ok := issuer.(*caddytls.InternalIssuer)
	if !ok {
		return nil
	}
	app, err := ctx.App("pki")
	if err != nil {
		return fmt.Errorf("loading the pki app: %w", err)
	}
	ca, err := app.(*caddypki.PKI).GetCA(ctx, iss.CA)
	if err != nil {
		return fmt.Errorf("the edge's internal issuer: %w", err)
	}
	if ca.InstallTrust == nil {
		ca.InstallTrust = new(bool)
	}
	return nil
}

// accept serves ln's connections until ln is closed. A failed accept
// (no descriptor left, say) is tried again after a backoff, so a brief
// shortage does not end the port; a connection over the edge's or its
// client's limit is closed at once.
func (e *Edge) accept(ln net.Listener, handler layer4.Handler) {
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if acceptRetry(err, &delay, false, e.logger) {
				continue
			}
			return
		}
		delay = 0
		counted := e.conns.admit(conns, conn)
		if counted == nil {
			_ = conn.Close()
			e.refused(conn)
			continue
		}
		go serveConn(counted, handler, e, e.logger)
	}
}

// refused logs a connection closed over the edge's or its client's
// bound: each at debug level, and at most once a minute a warning with
// how many since the last one, so an operator sees the bound being hit
// without a line per connection of an attack.
func (e *Edge) refused(conn net.Conn) {
	e.refusals.Add(1)
	if c := e.logger.Check(zapcore.DebugLevel, "connection refused: too many connections"); c != nil {
		c.Write(zap.String("remote", conn.RemoteAddr().String()), zap.Int("max_connections", e.MaxConnections), zap.Int("max_connections_per_client", e.MaxConnectionsPerClient))
	}
	now, last := time.Now().UnixNano(), e.lastWarned.Load()
	if now-last < int64(time.Minute) || !e.lastWarned.CompareAndSwap(last, now) {
		return
	}
	e.logger.Warn("connections refused: the edge holds max_connections, or a client its share",
		zap.Int64("refused", e.refusals.Swap(0)), zap.Int("max_connections", e.MaxConnections), zap.Int("max_connections_per_client", e.MaxConnectionsPerClient),
		zap.String("last_remote", conn.RemoteAddr().String()))
}

// deliver hands a connection to the HTTP server on fly/<http>. A TLS
// handshake that no route took names a host no app answers to on its
// address (a typo, no server name on a shared address): the client gets
// a TLS alert, unrecognized_name, where the HTTP server would write a
// plain-text 400 into its handshake.
func (e *Edge) deliver(c net.Conn) error {
	if cx, ok := c.(*layer4.Connection); ok && isTLSHandshake(cx.MatchingBytes()) {
		_, _ = c.Write(alertUnrecognizedName[:])
		return errNoAppForName
	}
	err := deliverTo(e.HTTP, c, time.Duration(e.HandOffTimeout))
	if err != nil && !errors.Is(err, errHandedOff) {
		e.logger.Error("HTTP connection closed", zap.String("remote", c.RemoteAddr().String()), zap.String("local", c.LocalAddr().String()), zap.Error(err))
	}
	return err
}

// errNoAppForName means that a TLS client named a host no app answers to.
var errNoAppForName = errors.New("TLS for a host name no app answers to here: refused with unrecognized_name")

// alertUnrecognizedName is a TLS record with a fatal unrecognized_name
// alert (RFC 8446 section 6; plaintext, as before any handshake keys).
var alertUnrecognizedName = [...]byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112}

// isTLSHandshake tells whether b starts with a TLS handshake record.
func isTLSHandshake(b []byte) bool {
	return len(b) >= 3 && b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04
}

// Stop closes the listeners; connections in flight go on.
func (e *Edge) Stop() error {
	for _, l := range e.listeners {
		_ = l.Close()
	}
	if e.udp != nil {
		e.udp.Close()
	}
	e.wg.Wait()
	e.listeners, e.udp = nil, nil
	return nil
}

// startUDP listens on the edge's UDP ports; flyhandlers relays their
// flows.
func (e *Edge) startUDP() error {
	fly, err := routing.FromContext(e.ctx)
	if err != nil {
		return err
	}
	e.udp, err = flyhandlers.ListenUDP(fly, e.udpPorts, time.Duration(e.UDPIdleTimeout), e.MaxUDPFlows, e.logger)
	return err
}

// Interface guards
var (
	_ caddy.App         = (*Edge)(nil)
	_ caddy.Provisioner = (*Edge)(nil)
)
