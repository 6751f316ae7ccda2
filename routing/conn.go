package routing

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/mholt/caddy-l4/layer4"
	"github.com/mholt/caddy-l4/modules/l4tls"
)

// connRouteVarKey is the connection variable that caches its route.
const connRouteVarKey = "fly.route"

// ConnAppVarKey is the connection variable (placeholder
// {l4.vars.fly.app}) that holds the name of the app a connection was
// routed to.
const ConnAppVarKey = "fly.app"

// RouteForConn returns the route of a layer 4 connection. With an
// address book, the address it arrived on decides (with the TLS server
// name on a shared address); without one, the app that answers to the
// TLS server name the edge terminated (when a tls handler ran before),
// else the only app with a service on the edge port. The answer is
// cached in the connection's variables.
func (a *App) RouteForConn(cx *layer4.Connection) (*Route, error) {
	if rt, ok := cx.GetVar(connRouteVarKey).(*Route); ok {
		return rt, nil
	}
	rt, err := a.routeFor(cx.LocalAddr(), serverName(cx))
	if err != nil {
		return nil, err
	}
	SetConnRoute(cx, rt)
	return rt, nil
}

// routeByPort returns the route of the only app with a service on port.
func (a *App) routeByPort(port int) (*Route, error) {
	slots := a.reg.Load().ports[port]
	switch len(slots) {
	case 0:
		return nil, fmt.Errorf("%w: no app has a service on port %d", ErrNoApp, port)
	case 1:
		return slots[0].load().route(port)
	default:
		return nil, fmt.Errorf("%w: %d apps have a service on port %d and the connection names none (no TLS server name)", ErrNoApp, len(slots), port)
	}
}

// serverName returns the server name of the last TLS handshake the edge
// terminated on cx, else the one a matcher read from the ClientHello,
// lower case, or "".
func serverName(cx *layer4.Connection) string {
	if chis := l4tls.GetClientHelloInfos(cx); len(chis) > 0 {
		return strings.ToLower(strings.TrimSuffix(chis[len(chis)-1].ServerName, "."))
	}
	if name, _ := cx.GetVar(ServerNameVarKey).(string); name != "" {
		return name
	}
	return ""
}

// ServerNameVarKey is the connection variable with the TLS server name a
// matcher read from the ClientHello before any handler ran (lower case).
const ServerNameVarKey = "fly.server_name"

// connPool is the edge's own view of a route's machines for layer 4:
// every machine the edge's health allows is usable, and its load is its
// connections in flight.
type connPool struct{ rt *Route }

func (p connPool) Usable(i int) bool {
	m := p.rt.machines[i]
	if c := p.rt.Service.Concurrency; c != nil && c.HardLimit > 0 && m.health.conns.Load() >= int64(c.HardLimit) {
		return false
	}
	return true
}

func (p connPool) Load(i int) int { return int(p.rt.machines[i].health.conns.Load()) }

// ErrNoMachine means that no machine of the app could be reached.
var ErrNoMachine = errors.New("no machine of the app can be reached")

// DialMachine connects to a machine of the route for one connection:
// the nearest healthy one (as Select chooses without client preferences);
// when a dial fails, the machine is left out of selection for
// failDuration and the next choice is tried, up to tries machines. The
// returned release func must be called when the connection ends; it
// keeps the machine's count of connections in flight.
func (rt *Route) DialMachine(ctx context.Context, dialer *net.Dialer, tries int, failDuration time.Duration) (net.Conn, int, func(), error) {
	var lastErr error
	for range max(tries, 1) {
		i, _ := Select(rt, connPool{rt}, Preference{})
		if i < 0 {
			break
		}
		m := rt.machines[i]
		m.health.conns.Add(1)
		conn, err := dialer.DialContext(ctx, "tcp", m.dial)
		if err == nil {
			return conn, i, func() { m.health.conns.Add(-1) }, nil
		}
		m.health.conns.Add(-1)
		m.health.failedUntil.Store(time.Now().Add(failDuration).UnixNano())
		lastErr = fmt.Errorf("machine %s (%s): %w", m.id, m.dial, err)
		if ctx.Err() != nil {
			break
		}
	}
	if lastErr == nil {
		return nil, -1, nil, fmt.Errorf("app %s: %w", rt.App, ErrNoMachine)
	}
	return nil, -1, nil, fmt.Errorf("app %s: %w: %w", rt.App, ErrNoMachine, lastErr)
}

// preambleVarKey is the connection variable with bytes to send to the
// machine before anything else (a PROXY protocol header).
const preambleVarKey = "fly.upstream_preamble"

// SetUpstreamPreamble asks fly_proxy to send b to the machine before the
// client's bytes; handlers such as proxy_proto use it.
func SetUpstreamPreamble(cx *layer4.Connection, b []byte) { cx.SetVar(preambleVarKey, b) }

// UpstreamPreamble returns what SetUpstreamPreamble set, or nil.
func UpstreamPreamble(cx *layer4.Connection) []byte {
	b, _ := cx.GetVar(preambleVarKey).([]byte)
	return b
}

// SetConnRoute records the route a handler resolved for cx (for example
// by the TLS server name during a handshake), so that later handlers use
// the same one.
func SetConnRoute(cx *layer4.Connection, rt *Route) {
	cx.SetVar(connRouteVarKey, rt)
	cx.SetVar(ConnAppVarKey, rt.App)
}

// RouteForServerName returns the route of a connection that arrived on
// local and whose TLS handshake names server name. With an address book
// the address decides (on a shared address, with the name); without one
// the app that answers to the name, else the only app with a service on
// the port (a connection to an app's own port needs no name).
func (a *App) RouteForServerName(name string, local net.Addr) (*Route, error) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if a.book.Load() != nil || name == "" {
		return a.routeFor(local, name)
	}
	if rt, err := a.Route(name, portOf(local)); err == nil {
		return rt, nil
	}
	return a.routeByPort(portOf(local))
}

// RouteForHello returns the route of a TLS handshake with server name
// name that arrived on local, by the rule HTTP requests follow: with an
// address book, the address (and on a shared address the name); without
// one, the app that answers to the name, or, when the client sent none,
// the only app with a service on the port. Unlike RouteForServerName, a
// name no app answers to finds no route.
func (a *App) RouteForHello(name string, local net.Addr) (*Route, error) {
	return a.routeFor(local, strings.ToLower(strings.TrimSuffix(name, ".")))
}

// tlsVarKey is the connection variable a TLS-terminating handler sets.
const tlsVarKey = "fly.tls_terminated"

// MarkTLSTerminated records that a handler terminated TLS on cx.
func MarkTLSTerminated(cx *layer4.Connection) { cx.SetVar(tlsVarKey, true) }

// pgTLSVarKey is the connection variable the pg_tls handler sets.
const pgTLSVarKey = "fly.pg_tls"

// MarkPGTLS records that the pg_tls handler handled cx.
func MarkPGTLS(cx *layer4.Connection) { cx.SetVar(pgTLSVarKey, true) }

// checkHandlers tells whether the handlers that ran on cx are the ones
// the app's port lists, so that a layer4 route that does not match the
// fly config never passes a connection the wrong way (for example
// plaintext to a port that promises TLS termination).
func (rt *Route) checkHandlers(cx *layer4.Connection) error {
	if rt.wantHTTP {
		return fmt.Errorf("app %s port %d: handlers %v: the port is served by the HTTP server, not by fly_proxy", rt.App, rt.Port.Port, rt.Port.Handlers)
	}
	gotTLS := cx.GetVar(tlsVarKey) == true || len(l4tls.GetClientHelloInfos(cx)) > 0
	gotPP := len(UpstreamPreamble(cx)) > 0
	gotPG := cx.GetVar(pgTLSVarKey) == true
	if gotTLS != rt.wantTLS || gotPP != rt.wantProxyProto || gotPG != rt.wantPGTLS {
		return fmt.Errorf("app %s port %d: handlers %v, but the layer4 route ran tls=%t proxy_proto=%t pg_tls=%t; fix the route to match", rt.App, rt.Port.Port, rt.Port.Handlers, gotTLS, gotPP, gotPG)
	}
	return nil
}

// upstreamWrapperVarKey is the connection variable with a function that
// fly_proxy applies to the machine connection before relaying.
const upstreamWrapperVarKey = "fly.upstream_wrapper"

// UpstreamWrapper prepares a new machine connection for a protocol
// handler (for example pg_tls, which sends the client's startup message
// and watches the server's first answers); it returns the connection to
// relay through.
type UpstreamWrapper func(up net.Conn) (net.Conn, error)

// SetUpstreamWrapper asks fly_proxy to apply w to the machine connection
// after the preamble is sent.
func SetUpstreamWrapper(cx *layer4.Connection, w UpstreamWrapper) {
	cx.SetVar(upstreamWrapperVarKey, w)
}

func upstreamWrapper(cx *layer4.Connection) UpstreamWrapper {
	w, _ := cx.GetVar(upstreamWrapperVarKey).(UpstreamWrapper)
	return w
}

// WithDefaultServerName makes a TLS config answer a client that sent no
// server name with the certificate of the route's app
// (<app>.<base_domain>), as a client that connects by address expects.
func (rt *Route) WithDefaultServerName(cfg *tls.Config, hello *tls.ClientHelloInfo) {
	if hello.ServerName != "" || cfg.GetCertificate == nil {
		return
	}
	getCert, name := cfg.GetCertificate, rt.Hostname
	cfg.GetCertificate = func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		named := *h
		named.ServerName = name
		return getCert(&named)
	}
}
