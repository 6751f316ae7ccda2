package flyhandlers

import (
	"fmt"
	"net"

	"github.com/mholt/caddy-l4/layer4"

	"github.com/flyedge/caddy-flyedge/routing"
)

// The connection variables below are how the layer 4 handlers of one
// connection talk to each other: what the handlers before fly_proxy
// prepared for the machine connection. What routing keeps of the
// connection (its route, the handlers that ran) is in routing's
// state.go.

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

// checkHandlers tells whether the handlers that ran on cx are the ones
// the app's port lists (routing.Handled, which the handlers mark), so
// that a layer4 route that does not match the fly config never passes a
// connection the wrong way (for example plaintext to a port that
// promises TLS termination). caddy-l4's own tls handler counts as tls.
func checkHandlers(cx *layer4.Connection, rt *routing.Route) error {
	if rt.Handlers.ServedByHTTP() {
		return fmt.Errorf("app %s port %d: handlers %v: the port is served by the HTTP server, not by fly_proxy", rt.App, rt.Port.Port, rt.Handlers)
	}
	if done := routing.Handled(cx); done != rt.Handlers {
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
