package routing

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/mholt/caddy-l4/layer4"
	"github.com/mholt/caddy-l4/modules/l4tls"
)

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

// handledVarKey is the connection variable with the Fly handlers that
// have run on a connection (a Handlers).
const handledVarKey = "fly.handled"

// MarkHandled records that handler h ran on cx (fly_tls, pg_tls and
// proxy_proto call it), so that fly_proxy can check the route ran what
// the app's port lists.
func MarkHandled(cx *layer4.Connection, h Handlers) {
	done, _ := cx.GetVar(handledVarKey).(Handlers)
	cx.SetVar(handledVarKey, done|h)
}

// checkHandlers tells whether the handlers that ran on cx are the ones
// the app's port lists, so that a layer4 route that does not match the
// fly config never passes a connection the wrong way (for example
// plaintext to a port that promises TLS termination). caddy-l4's own tls
// handler counts as tls.
func (rt *Route) checkHandlers(cx *layer4.Connection) error {
	if rt.Handlers.Has(HandlerHTTP) {
		return fmt.Errorf("app %s port %d: handlers %v: the port is served by the HTTP server, not by fly_proxy", rt.App, rt.Port.Port, rt.Handlers)
	}
	done, _ := cx.GetVar(handledVarKey).(Handlers)
	if len(l4tls.GetClientHelloInfos(cx)) > 0 {
		done |= HandlerTLS
	}
	if done != rt.Handlers {
		return fmt.Errorf("app %s port %d: handlers %v, but the layer4 route ran %v; fix the route to match", rt.App, rt.Port.Port, rt.Handlers, done)
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
