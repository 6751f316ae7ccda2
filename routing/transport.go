package routing

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(new(FlyTransport))
}

// FlyTransport is Caddy's http transport that speaks to each app's
// machines the way the app asks for: HTTP/1.1, or HTTP/2 cleartext (h2c)
// for apps whose service sets h2_backend (fly.toml's
// http_service.http_options.h2_backend). Whatever HTTP version the client
// used, an app receives HTTP/1.1 unless it opted in to h2c.
//
// It takes every option of the http transport (timeouts, keep-alive
// pools, ...), which apply to both kinds of connection; its versions
// option is ignored. Requests that the fly upstream source did not route
// use HTTP/1.1.
//
// A machine that refuses the connection, or does not accept it within
// dial_timeout (default 3s), is left out of selection for the fly app's
// failover fail_duration and the request goes to the next machine the
// fly selection policy would choose (Fly-Force-Instance-Id allows none; a
// passed-over Fly-Prefer-Instance-Id is told to the app in
// Fly-Preferred-Instance-Unavailable), up to the failover attempts per
// request, as Fly.io's proxy does: the same policy and bounds as
// Route.Connect for layer 4. Nothing of the request has been sent at that
// point, so any request may go on. When no machine is left, fly_headers
// answers the client with the reason. This needs no lb_retries or
// fail_duration in reverse_proxy.
//
//	reverse_proxy {
//		dynamic fly
//		lb_policy fly
//		transport fly {
//			keepalive_idle_conns_per_host 512
//		}
//	}
type FlyTransport struct {
	reverseproxy.HTTPTransport

	h2c *reverseproxy.HTTPTransport
}

// CaddyModule returns the Caddy module information.
func (*FlyTransport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.fly",
		New: func() caddy.Module { return new(FlyTransport) },
	}
}

// Provision sets up the HTTP/1.1 and the h2c transport.
func (t *FlyTransport) Provision(ctx caddy.Context) error {
	if t.TLS != nil {
		return errors.New("tls: machines are reached over cleartext; the fly transport takes no tls options")
	}
	h2c := t.HTTPTransport // a copy of the config, before provisioning
	t.Versions = []string{"1.1"}
	if err := t.HTTPTransport.Provision(ctx); err != nil {
		return err
	}
	h2c.Versions = []string{"h2c", "2"}
	if err := h2c.Provision(ctx); err != nil {
		return fmt.Errorf("h2c transport: %w", err)
	}
	t.h2c = &h2c
	countMachineConns(t.HTTPTransport.Transport)
	countMachineConns(t.h2c.Transport)
	return nil
}

// dialInfoCtxKey is the context key under which Caddy's reverse proxy
// tells its transport where to dial (reverseproxy.GetDialInfo).
const dialInfoCtxKey caddy.CtxKey = "reverse_proxy.dial_info"

// RoundTrip sends the request over the connection kind the app asks
// for, to the next machine when one does not take the connection.
func (t *FlyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	st := stateOf(req) // one lookup: the context chain is deep here
	rt := st.currentRoute()
	if rt == nil {
		return t.HTTPTransport.RoundTrip(req)
	}
	tr := &t.HTTPTransport
	if rt.Service.HTTPOptions != nil && rt.Service.HTTPOptions.H2Backend {
		tr = t.h2c
	}
	RenameVia(req.Header, "", rt.Via)
	di, ok := reverseproxy.GetDialInfo(req.Context())
	i := -1
	if ok {
		i = rt.MachineByDial(di.Address)
	}
	resp, err := tr.RoundTrip(req)
	if err == nil || !isDialError(err) || i < 0 || LocalShortage(err) {
		if err == nil && i >= 0 {
			st.setMachine(&rt.machines[i].id)
		}
		if err == nil {
			watchApp(rt, resp)
		}
		return resp, err
	}
	pref := st.preference(req)
	ft := rt.newTries(Failover{})
	choose := func(p *tries) (int, Outcome) { return chooseFor(req, rt, p, pref) }
	for {
		next, outcome := ft.next(i, choose)
		if next < 0 {
			SetUnroutable(req, outcome)
			return nil, err
		}
		if outcome == PreferredUnavailable {
			req.Header.Set(HeaderPreferredUnavailable, pref.PreferInstance)
		}
		i = next
		m := rt.machines[i]
		host, port, _ := net.SplitHostPort(m.dial)
		next2 := di
		next2.Network, next2.Address, next2.Host, next2.Port = "tcp", m.dial, host, port
		r2 := req.WithContext(context.WithValue(req.Context(), dialInfoCtxKey, next2))
		r2.URL.Host = m.dial
		if resp, err = tr.RoundTrip(r2); err == nil || !isDialError(err) || LocalShortage(err) {
			if err == nil {
				st.setMachine(&m.id)
				watchApp(rt, resp)
			}
			return resp, err
		}
	}
}

// isDialError reports whether err is the proxy's failure to connect to
// the machine (a function of its own: the target errors.As needs
// escapes, and should cost an allocation only when there is an error).
func isDialError(err error) bool {
	var de reverseproxy.DialError
	return errors.As(err, &de)
}

// machineConns counts the connections the fly transports hold to
// machines, over the process (every config's, as connections outlive
// their config), bounded by SetMachineConnLimit. A layer 4 connection's
// machine connection is its client connection's business; an HTTP
// client connection can carry many requests at once (HTTP/2 streams),
// each of which may need a connection of its own, so these are bounded
// apart.
var machineConns struct {
	n, max atomic.Int64
}

// SetMachineConnLimit bounds the connections the fly transports hold to
// machines at once, over the process (the edge's max_connections); 0
// leaves them unbounded. A dial over the bound fails at once, with
// ErrDescriptors.
func SetMachineConnLimit(n int) { machineConns.max.Store(int64(n)) }

// ErrDescriptors means that the edge holds as many connections as it
// allows itself; a dial that fails with it says nothing of the machine.
var ErrDescriptors = errors.New("the edge holds the most connections to machines it allows itself (fly_edge max_connections)")

// countMachineConns makes tr's dials count in machineConns.
func countMachineConns(tr *http.Transport) {
	if tr == nil || tr.DialContext == nil {
		return
	}
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if n := machineConns.n.Add(1); n > machineConns.max.Load() && machineConns.max.Load() > 0 {
			machineConns.n.Add(-1)
			return nil, ErrDescriptors
		}
		c, err := dial(ctx, network, addr)
		if err != nil {
			machineConns.n.Add(-1)
			return nil, err
		}
		return &machineConn{Conn: c}, nil
	}
}

// machineConn is a connection to a machine counted in machineConns until
// it is closed.
type machineConn struct {
	net.Conn
	once sync.Once
}

func (c *machineConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { machineConns.n.Add(-1) })
	return err
}

// watchApp makes a response that may last (a protocol switch, such as a
// WebSocket, or a body of unknown length, such as server-sent events)
// end when its app is destroyed through the admin API: closing the
// machine's side ends the copy, and Caddy closes the client's side.
// Responses of known length finish on their own and are left alone.
func watchApp(rt *Route, resp *http.Response) {
	if resp.StatusCode != http.StatusSwitchingProtocols && resp.ContentLength >= 0 || resp.Body == nil || resp.Body == http.NoBody {
		return
	}
	if rwc, ok := resp.Body.(io.ReadWriteCloser); ok {
		s := &appStream{ReadWriteCloser: rwc}
		s.stop = context.AfterFunc(rt.life, func() { _ = rwc.Close() })
		resp.Body = s
		return
	}
	b := &appBody{ReadCloser: resp.Body}
	body := resp.Body
	b.stop = context.AfterFunc(rt.life, func() { _ = body.Close() })
	resp.Body = b
}

// appStream is the machine's side of a protocol switch, watched by
// watchApp; Caddy's reverse proxy needs it to be an io.ReadWriteCloser.
type appStream struct {
	io.ReadWriteCloser
	stop func() bool
}

func (s *appStream) Close() error {
	s.stop()
	return s.ReadWriteCloser.Close()
}

// appBody is a response body watched by watchApp.
type appBody struct {
	io.ReadCloser
	stop func() bool
}

func (b *appBody) Close() error {
	b.stop()
	return b.ReadCloser.Close()
}

// Cleanup closes both transports' idle connections.
func (t *FlyTransport) Cleanup() error {
	if t.h2c != nil {
		_ = t.h2c.Cleanup()
	}
	return t.HTTPTransport.Cleanup()
}

// Interface guards
var (
	_ caddy.Provisioner  = (*FlyTransport)(nil)
	_ caddy.CleanerUpper = (*FlyTransport)(nil)
	_ http.RoundTripper  = (*FlyTransport)(nil)
)

// RenameVia gives the Via entry Caddy's reverse proxy appended
// ("1.1 Caddy", the last entry naming Caddy) the edge's name, in Fly.io's
// form: "1.1 <name>", "2 <name>". A proto other than "" replaces the
// protocol version Caddy wrote (a response's Via carries the client's
// protocol, as Fly's proxy writes it, not the machine's).
func RenameVia(h http.Header, proto, name string) {
	vias := h["Via"]
	for i := len(vias) - 1; i >= 0; i-- {
		was, ok := strings.CutSuffix(vias[i], " Caddy")
		if !ok {
			continue
		}
		if proto == "" {
			proto = was
			if proto == "2.0" || proto == "3.0" {
				proto = proto[:1]
			}
		}
		vias[i] = proto + " " + name
		return
	}
}
