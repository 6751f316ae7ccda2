// The state flyedge keeps of one HTTP request and of one layer 4
// connection as its modules learn it: the route the resolver gave it
// (cached, so every module of one request or connection sees the same),
// and, for a request, a fly-replay's preference, the machine it went to,
// why no machine could take it and the machine slot it holds; for a
// connection, the TLS server name a matcher read and the Fly handlers
// that ran. Every read and write of it is in this file; the other
// packages go through the functions below.

package routing

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/mholt/caddy-l4/layer4"
	"github.com/mholt/caddy-l4/modules/l4tls"
)

// routeVarKey is the request and connection variable that caches the
// route of a request or connection.
const routeVarKey = "fly.route"

// AppVarKey is the request variable ({http.vars.fly.app}) and the
// connection variable ({l4.vars.fly.app}) that holds the name of the app
// a request or connection was routed to.
const AppVarKey = "fly.app"

// MachineVarKey is the request variable ({http.vars.fly.machine}) with
// the ID of the machine transport fly sent the request to.
const MachineVarKey = "fly.machine"

// requestState is what flyedge learns of one request as it goes: its
// route, a fly-replay's preference, the machine transport fly sent it to,
// and why no machine could be chosen. It is put in the request's
// variables once, by the first flyedge module that sees the request
// (before any connection to a machine is dialed); later changes are
// atomic stores into it, never writes to the variables map, which the
// HTTP transport's dial goroutines read concurrently.
type requestState struct {
	route      atomic.Pointer[Route]
	pref       atomic.Pointer[Preference]
	machine    atomic.Pointer[string]
	unroutable atomic.Int32 // an Outcome plus one; 0 for none
	slot       atomic.Pointer[slot]
	watching   atomic.Bool // the request's end gives back its slot
}

// slot is the unit of a machine's load a request holds (Acquire).
type slot struct {
	rt *Route
	i  int
}

// appVar is {http.vars.fly.app}: the name of the request's app.
type appVar struct{ s *requestState }

func (v appVar) String() string {
	if rt := v.s.route.Load(); rt != nil {
		return rt.App
	}
	return ""
}

// machineVar is {http.vars.fly.machine}: the machine transport fly sent
// the request to.
type machineVar struct{ s *requestState }

func (v machineVar) String() string {
	if m := v.s.machine.Load(); m != nil {
		return *m
	}
	return ""
}

// stateOf returns the request's state, nil before any flyedge module saw
// it.
func stateOf(r *http.Request) *requestState {
	st, _ := RequestVars(r)[routeVarKey].(*requestState)
	return st
}

// ensureState returns the request's state, putting a new one in its
// variables first if need be.
func ensureState(r *http.Request) *requestState { return ensureStateIn(RequestVars(r)) }

// ensureStateIn is ensureState with the request's variables at hand.
func ensureStateIn(vars map[string]any) *requestState {
	if st, ok := vars[routeVarKey].(*requestState); ok {
		return st
	}
	st := new(requestState)
	if vars != nil { // outside Caddy's HTTP server: the state lives as long as the call
		vars[routeVarKey] = st
		vars[AppVarKey] = appVar{st}
		vars[MachineVarKey] = machineVar{st}
	}
	return st
}

// RequestVars returns the request's variables (caddyhttp.GetVar and
// SetVar's map), nil outside Caddy's HTTP server. Each lookup walks the
// request's context chain, which is deep by the time a handler runs, so
// a module that reads or sets several variables fetches the map once.
func RequestVars(r *http.Request) map[string]any {
	vars, _ := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	return vars
}

// RouteForRequest returns the route of an HTTP request: Resolve for the
// address the connection arrived on and the request's Host. The answer
// is cached in the request's variables, so every flyedge module of one
// request sees the same route.
func (a *App) RouteForRequest(r *http.Request) (*Route, error) {
	return a.RouteForVars(r, RequestVars(r))
}

// RouteForVars is RouteForRequest with the request's variables at hand
// (RequestVars).
func (a *App) RouteForVars(r *http.Request, vars map[string]any) (*Route, error) {
	if st, ok := vars[routeVarKey].(*requestState); ok {
		if rt := st.route.Load(); rt != nil {
			return rt, nil
		}
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	addr, port, host := AddrOf(local), portOf(local), requestHost(r)
	rt, err := a.resolve(addr, port, host)
	if err != nil {
		return nil, err
	}
	if r.TLS != nil && r.TLS.ServerName != "" {
		if sni := normalizeName(r.TLS.ServerName); sni != host {
			if byName, err := a.resolve(addr, port, sni); err == nil && byName.App != rt.App {
				return nil, fmt.Errorf("%w: the connection was set up for %q (app %s), the request is for %q (app %s); open a connection for it", ErrMisdirected, sni, byName.App, host, rt.App)
			}
		}
	}
	ensureStateIn(vars).route.Store(rt)
	return rt, nil
}

// SetRequestRoute makes rt the route of r for the modules that handle it
// from now on (a fly-replay to another app).
func SetRequestRoute(r *http.Request, rt *Route) { ensureState(r).route.Store(rt) }

// RouteOf returns the route RouteForRequest cached for r, or nil.
func RouteOf(r *http.Request) *Route { return stateOf(r).currentRoute() }

// currentRoute is RouteOf with the request's state (nil: none yet).
func (st *requestState) currentRoute() *Route {
	if st != nil {
		return st.route.Load()
	}
	return nil
}

// MachineOf returns the machine transport fly sent r to, or "".
func MachineOf(r *http.Request) string {
	if st := stateOf(r); st != nil {
		return machineVar{st}.String()
	}
	return ""
}

// setMachine records the machine (its ID) transport fly sent the request
// to.
func (st *requestState) setMachine(id *string) { st.machine.Store(id) }

// ClearMachine forgets the machine r was sent to (before r is sent
// again, by a fly-replay).
func ClearMachine(r *http.Request) {
	if st := stateOf(r); st != nil {
		st.machine.Store(nil)
	}
}

// SetReplayPreference makes pref the preference machine selection uses
// for r from now on, in place of its Fly-* headers (a fly-replay's
// region, instance and elsewhere).
func SetReplayPreference(r *http.Request, pref Preference) {
	ensureState(r).pref.Store(&pref)
}

// RequestPreference returns what machine selection follows for r: a
// fly-replay's preference, else its Fly-* headers.
func RequestPreference(r *http.Request) Preference { return preferenceOf(r) }

// preferenceOf returns what a request asks for: a fly-replay's
// preference, else its Fly-* headers.
func preferenceOf(r *http.Request) Preference { return stateOf(r).preference(r) }

// preference is preferenceOf with the request's state (nil: none yet).
func (st *requestState) preference(r *http.Request) Preference {
	if st != nil {
		if p := st.pref.Load(); p != nil {
			return *p
		}
	}
	return headerPreference(r)
}

// ClearUnroutable forgets what Unroutable would say of r (before r is
// sent again, by a fly-replay).
func ClearUnroutable(r *http.Request) {
	if st := stateOf(r); st != nil {
		st.unroutable.Store(0)
	}
}

// SetUnroutable records why no machine could take r (what the fly
// selection policy and transport do), for fly_headers to tell the client.
func SetUnroutable(r *http.Request, o Outcome) { ensureState(r).unroutable.Store(int32(o) + 1) }

// Unroutable returns why the fly selection policy chose no machine for r,
// and false when it did not fail.
func Unroutable(r *http.Request) (Outcome, bool) {
	if st := stateOf(r); st != nil {
		if v := st.unroutable.Load(); v != 0 {
			return Outcome(v - 1), true
		}
	}
	return 0, false
}

// SlotHolder gives back the machine slot of a request (see HoldSlots).
type SlotHolder struct{ st *requestState }

// HoldSlots tells machine selection that the caller gives back the slot
// request r takes (concurrency limits) with the holder's Release when r
// ends, as fly_headers does after the handlers after it return. Without
// it, the slot is given back when r's context ends, which costs a
// goroutine.
func HoldSlots(r *http.Request) SlotHolder {
	st := ensureState(r)
	st.watching.Store(true)
	return SlotHolder{st}
}

// Release gives back the machine slot the request holds, if any.
func (h SlotHolder) Release() { h.st.releaseSlot() }

// releaseSlot gives back the machine slot the request holds, if any.
func (st *requestState) releaseSlot() {
	if s := st.slot.Swap(nil); s != nil {
		s.rt.Release(s.i)
	}
}

// holdSlot records that the request holds machine i of rt's slot until
// it is given back: by the caller of HoldSlots, else when ctx (the
// request's) ends.
func (st *requestState) holdSlot(ctx context.Context, rt *Route, i int) {
	st.slot.Store(&slot{rt, i})
	if st.watching.CompareAndSwap(false, true) { // nobody gives it back: r's end does
		context.AfterFunc(ctx, st.releaseSlot)
	}
}

// RouteForConn returns the route of a layer 4 connection: the one a
// handler recorded with SetConnRoute (fly_tls and pg_tls, after the
// handshake), else Resolve for the address the connection arrived on
// and the TLS server name the edge terminated or a matcher read. The
// answer is cached in the connection's variables.
func (a *App) RouteForConn(cx *layer4.Connection) (*Route, error) {
	if rt, ok := cx.GetVar(routeVarKey).(*Route); ok {
		return rt, nil
	}
	rt, err := a.Resolve(cx.LocalAddr(), serverName(cx))
	if err != nil {
		return nil, err
	}
	SetConnRoute(cx, rt)
	return rt, nil
}

// SetConnRoute records the route a handler resolved for cx (for example
// during a TLS handshake, from the server name), so that later handlers
// use the same one.
func SetConnRoute(cx *layer4.Connection, rt *Route) {
	cx.SetVar(routeVarKey, rt)
	cx.SetVar(AppVarKey, rt.App)
}

// serverNameVarKey is the connection variable with the TLS server name
// the layer 4 fly_app matcher read from the ClientHello before any
// handler ran.
const serverNameVarKey = "fly.server_name"

// setServerName records the TLS server name a matcher read from cx's
// ClientHello (lower case, without a final dot).
func setServerName(cx *layer4.Connection, name string) { cx.SetVar(serverNameVarKey, name) }

// serverName returns the server name of the last TLS handshake the edge
// terminated on cx, else the one a matcher read from the ClientHello,
// or "".
func serverName(cx *layer4.Connection) string {
	if chis := l4tls.GetClientHelloInfos(cx); len(chis) > 0 {
		return chis[len(chis)-1].ServerName
	}
	name, _ := cx.GetVar(serverNameVarKey).(string)
	return name
}

// handledVarKey is the connection variable with the Fly handlers that
// have run on a connection (a Handlers).
const handledVarKey = "fly.handled"

// MarkHandled records that handler h ran on cx (fly_tls, pg_tls and
// proxy_proto call it), so that fly_proxy can check the route ran what
// the app's port lists (Handled).
func MarkHandled(cx *layer4.Connection, h Handlers) {
	done, _ := cx.GetVar(handledVarKey).(Handlers)
	cx.SetVar(handledVarKey, done|h)
}

// Handled returns the Fly handlers that have run on cx: those marked
// with MarkHandled, and tls when caddy-l4's own tls handler terminated
// TLS on it.
func Handled(cx *layer4.Connection) Handlers {
	done, _ := cx.GetVar(handledVarKey).(Handlers)
	if len(l4tls.GetClientHelloInfos(cx)) > 0 {
		done |= HandlerTLS
	}
	return done
}
