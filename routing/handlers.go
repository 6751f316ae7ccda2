package routing

import (
	"fmt"
	"strings"
)

// Handlers is a port's handler list, parsed once: which of Fly's
// connection handlers run on it. Fly accepts only a few lists, each in
// one order (see ParseHandlers), so a set says everything a list does.
type Handlers uint8

// Fly's connection handlers.
const (
	HandlerTLS        Handlers = 1 << iota // "tls": terminate TLS
	HandlerHTTP                            // "http": speak HTTP to the machine
	HandlerPGTLS                           // "pg_tls": terminate PostgreSQL TLS
	HandlerProxyProto                      // "proxy_proto": send a PROXY protocol header
)

// PassThrough is the empty handler list: bytes go to the machine as they
// came.
const PassThrough Handlers = 0

// handlerNames are the handlers in the order every accepted list has
// them, each with its name in fly.toml and the layer 4 handler module
// (layer4.handlers.<step>) that runs it; http has none: the HTTP server
// runs it.
var handlerNames = []struct {
	h    Handlers
	name string
	step string
}{{HandlerTLS, "tls", "fly_tls"}, {HandlerHTTP, "http", ""}, {HandlerPGTLS, "pg_tls", "pg_tls"}, {HandlerProxyProto, "proxy_proto", "proxy_proto"}}

// acceptedLists are the handler lists Fly accepts, in their order
// (HandlerSets): the sets the HTTP server serves last.
var acceptedLists = [][]Handlers{
	{},
	{HandlerTLS},
	{HandlerTLS, HandlerProxyProto},
	{HandlerProxyProto},
	{HandlerPGTLS},
	{HandlerTLS, HandlerHTTP},
	{HandlerHTTP},
}

// otherOrders are lists Fly accepts in another order than its accepted
// list of the same set: flyctl writes [http tls] for the 443 port of
// every [http_service] (HTTPService.ToService), and the set is
// [tls http]'s: TLS is terminated first whatever the order.
var otherOrders = [][]Handlers{{HandlerHTTP, HandlerTLS}}

// ParseHandlers parses a handler list as fly.toml writes it; it refuses
// an unknown handler, one listed twice, and a list Fly does not accept
// (naming the first handler no accepted list allows at its place).
// [http tls], as flyctl writes it, is [tls http]; the set's List gives
// the list in the accepted order.
func ParseHandlers(names []string) (Handlers, error) {
	list := make([]Handlers, 0, len(names))
	var set Handlers
	for _, n := range names {
		h := handlerByName(n)
		if h == 0 {
			return 0, fmt.Errorf("unknown handler %q (want http, tls, pg_tls or proxy_proto)", n)
		}
		if set&h != 0 {
			return 0, fmt.Errorf("handler %q listed twice", n)
		}
		set |= h
		list = append(list, h)
	}
	longest := 0
	for _, l := range append(acceptedLists[:len(acceptedLists):len(acceptedLists)], otherOrders...) {
		n := 0
		for n < len(l) && n < len(list) && l[n] == list[n] {
			n++
		}
		if n == len(l) && n == len(list) {
			return set, nil
		}
		longest = max(longest, n)
	}
	where := "first"
	if longest > 0 {
		where = fmt.Sprintf("after %q", names[longest-1])
	}
	return 0, fmt.Errorf("handler %q is not allowed %s (accepted lists: none, [http], [tls], [tls http] or [http tls], [pg_tls], [proxy_proto], [tls proxy_proto])", names[min(longest, len(names)-1)], where)
}

func handlerByName(name string) Handlers {
	for _, hn := range handlerNames {
		if hn.name == name {
			return hn.h
		}
	}
	return 0
}

// Has tells whether every handler of x is in h.
func (h Handlers) Has(x Handlers) bool { return h&x == x }

// String returns the list as fly.toml writes it, e.g. "[tls http]".
func (h Handlers) String() string { return "[" + strings.Join(h.List(), " ") + "]" }

// Label returns the list for a metric label: "tls+http", "none" for
// pass-through.
func (h Handlers) Label() string {
	if h == PassThrough {
		return "none"
	}
	return strings.Join(h.List(), "+")
}

// What a port's handler set asks of the edge is said here, once: the
// edge's layer 4 dispatch (HandlerSets and Steps), the fly_app matchers,
// fly_proxy's check of what ran on a connection and the fly_tls_options
// listener wrapper ask these methods instead of testing the bits.

// HandlerSets returns every handler set Fly accepts, in the order of
// fly.toml's accepted lists.
func HandlerSets() []Handlers {
	sets := make([]Handlers, len(acceptedLists))
	for i, l := range acceptedLists {
		for _, h := range l {
			sets[i] |= h
		}
	}
	return sets
}

// TerminatesTLS tells whether the edge terminates TLS on the port's
// connections before anything else (tls).
func (h Handlers) TerminatesTLS() bool { return h.Has(HandlerTLS) }

// ServedByHTTP tells whether the port's connections go to the HTTP
// server (http; after the edge terminated TLS when the set has tls),
// which speaks HTTP to the machine. The other sets are served at layer
// 4: their handlers run, and fly_proxy relays the bytes to a machine.
func (h Handlers) ServedByHTTP() bool { return h.Has(HandlerHTTP) }

// AtLayer4 tells whether a layer 4 route takes the port's connections
// first: every set but plain [http], whose connections the HTTP server
// reads as they come, as it does every connection no route takes.
func (h Handlers) AtLayer4() bool { return h != HandlerHTTP }

// SSLRequestFirst tells whether the port's clients open with a
// PostgreSQL SSLRequest rather than a TLS ClientHello (pg_tls): on an
// address where the server name decides, the name only comes in the TLS
// handshake pg_tls runs after it.
func (h Handlers) SSLRequestFirst() bool { return h == HandlerPGTLS }

// Steps returns the layer 4 handler modules that run the port's
// connections, in order: fly_tls, proxy_proto and pg_tls as the list has
// them, then fly_proxy, which relays to a machine; for a set the HTTP
// server serves, the steps before the connection goes to it (fly_tls
// for [tls http], none for [http]).
func (h Handlers) Steps() []string {
	var steps []string
	for _, hn := range handlerNames {
		if h.Has(hn.h) && hn.step != "" {
			steps = append(steps, hn.step)
		}
	}
	if !h.ServedByHTTP() {
		steps = append(steps, "fly_proxy")
	}
	return steps
}

// List returns the handler names as fly.toml writes them, in order; nil
// for pass-through.
func (h Handlers) List() []string {
	var names []string
	for _, hn := range handlerNames {
		if h.Has(hn.h) {
			names = append(names, hn.name)
		}
	}
	return names
}
