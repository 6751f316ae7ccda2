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

var handlerNames = []struct {
	h    Handlers
	name string
}{{HandlerTLS, "tls"}, {HandlerHTTP, "http"}, {HandlerPGTLS, "pg_tls"}, {HandlerProxyProto, "proxy_proto"}}

// acceptedLists are the handler lists Fly accepts, in their order.
var acceptedLists = [][]Handlers{
	{},
	{HandlerHTTP},
	{HandlerTLS},
	{HandlerTLS, HandlerHTTP},
	{HandlerPGTLS},
	{HandlerProxyProto},
	{HandlerTLS, HandlerProxyProto},
}

// ParseHandlers parses a handler list as fly.toml writes it; it refuses
// an unknown handler, one listed twice, and a list Fly does not accept
// (naming the first handler no accepted list allows at its place).
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
	for _, l := range acceptedLists {
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
	return 0, fmt.Errorf("handler %q is not allowed %s (accepted lists: none, [http], [tls], [tls http], [pg_tls], [proxy_proto], [tls proxy_proto])", names[min(longest, len(names)-1)], where)
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
func (h Handlers) String() string {
	var names []string
	for _, hn := range handlerNames {
		if h.Has(hn.h) {
			names = append(names, hn.name)
		}
	}
	return "[" + strings.Join(names, " ") + "]"
}

// Label returns the list for a metric label: "tls+http", "none" for
// pass-through.
func (h Handlers) Label() string {
	if h == PassThrough {
		return "none"
	}
	var names []string
	for _, hn := range handlerNames {
		if h.Has(hn.h) {
			names = append(names, hn.name)
		}
	}
	return strings.Join(names, "+")
}
