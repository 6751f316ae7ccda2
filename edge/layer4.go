package edge

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func init() {
	caddy.RegisterModule(new(ListenerWrapper))
}

// ListenerWrapper (`caddy.listeners.fly_layer4`) puts caddy-l4 routes in
// front of an HTTP server, as caddy-l4's own `layer4` listener wrapper
// does, so one port can carry layer 4 services (raw TCP to an app's
// dedicated address) beside HTTPS for the apps on the shared address:
// connections a route takes are handled at layer 4, every other one goes
// on to the HTTP server with the bytes the matchers read replayed.
//
// It differs from caddy-l4 v0.1.2's wrapper in what happens after a
// connection is handed to the HTTP server: that wrapper puts the
// connection's read-ahead buffer back in a pool while the HTTP server may
// still replay from it (another connection can overwrite the bytes), and
// reads the connection's byte counters while the HTTP server updates
// them (a data race). Here each connection owns its buffer and nothing
// touches a connection after the handoff.
//
//	listener_wrappers {
//		fly_layer4 {
//			@raw fly_app {
//				handlers none
//			}
//			route @raw {
//				fly_proxy
//			}
//		}
//		tls
//	}
type ListenerWrapper struct {
	// Routes that may take a connection; the rest go to the HTTP server.
	Routes layer4.RouteList `json:"routes,omitempty"`

	// How long the matchers may wait for the bytes they need.
	// Default: 3s
	MatchingTimeout caddy.Duration `json:"matching_timeout,omitempty"`

	handler layer4.Handler
	logger  *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*ListenerWrapper) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.listeners.fly_layer4",
		New: func() caddy.Module { return new(ListenerWrapper) },
	}
}

// Provision sets up the routes.
func (lw *ListenerWrapper) Provision(ctx caddy.Context) error {
	lw.logger = ctx.Logger()
	if lw.MatchingTimeout <= 0 {
		lw.MatchingTimeout = caddy.Duration(layer4.MatchingTimeoutDefault)
	}
	if err := lw.Routes.Provision(ctx); err != nil {
		return err
	}
	// caddy-l4 logs a client that closes before its first bytes matched
	// at error level; that is the client's business, not the edge's
	routesLogger := lw.logger.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return goneClients{c} }))
	lw.handler = lw.Routes.Compile(routesLogger, time.Duration(lw.MatchingTimeout), layer4.HandlerFunc(handOff))
	return nil
}

// goneClients is a zap core that logs caddy-l4's "matching connection"
// errors caused by the client going away (EOF, reset) at debug level.
type goneClients struct{ zapcore.Core }

func (g goneClients) With(fields []zapcore.Field) zapcore.Core {
	return goneClients{g.Core.With(fields)}
}

func (g goneClients) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if e.Message == "matching connection" && e.Level > zapcore.DebugLevel {
		return ce.AddCore(e, g) // decided in Write, which sees the error
	}
	return g.Core.Check(e, ce)
}

func (g goneClients) Write(e zapcore.Entry, fields []zapcore.Field) error {
	for _, f := range fields {
		if err, ok := f.Interface.(error); ok && f.Type == zapcore.ErrorType && clientGone(err) {
			e.Level = zapcore.DebugLevel
		}
	}
	if !g.Core.Enabled(e.Level) {
		return nil
	}
	return g.Core.Write(e, fields)
}

// clientGone tells whether err means that the client closed or reset the
// connection.
func clientGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}

// errHandedOff means that the connection went on to the HTTP server.
var errHandedOff = errors.New("connection handed to the HTTP server")

type handOffKey struct{}

// handOffTarget is where handOff delivers connections for the HTTP
// server: the listener fly_layer4 wraps, or the edge's virtual listener.
type handOffTarget interface {
	deliver(c net.Conn) error // errHandedOff once the HTTP server has it
}

// handOff passes a connection no route took to the HTTP server. A TLS
// connection a handler terminated goes as the *tls.Conn itself, so the
// HTTP server speaks HTTP/2 over it natively; one whose TLS caddy-l4
// terminated carries its state.
func handOff(cx *layer4.Connection) error {
	target := cx.Context.Value(handOffKey{}).(handOffTarget)
	var c net.Conn = cx
	if tc, ok := cx.Conn.(*tls.Conn); ok {
		c = tc
	} else if states, _ := cx.GetVar(layer4.TLSConnectionStatesVarName).([]*tls.ConnectionState); len(states) > 0 {
		c = &tlsStateConn{Conn: cx, state: states[len(states)-1]}
	}
	return target.deliver(c)
}

func (l *wrappedListener) deliver(c net.Conn) error {
	select {
	case l.conns <- c:
		return errHandedOff
	case <-l.done:
		return net.ErrClosed
	}
}

// WrapListener implements caddy.ListenerWrapper.
func (lw *ListenerWrapper) WrapListener(ln net.Listener) net.Listener {
	l := &wrappedListener{
		Listener: ln,
		lw:       lw,
		conns:    make(chan net.Conn), // taken only by an Accept: none is left behind when it closes
		done:     make(chan struct{}),
	}
	go l.loop()
	return l
}

type wrappedListener struct {
	net.Listener
	lw     *ListenerWrapper
	conns  chan net.Conn
	done   chan struct{}
	closed atomic.Bool
	err    error // why loop stopped; read after done is closed
	wg     sync.WaitGroup
}

func (l *wrappedListener) loop() {
	var delay time.Duration
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			if acceptRetry(err, &delay, l.closed.Load(), l.lw.logger) {
				continue
			}
			l.err = err
			close(l.done)
			return
		}
		delay = 0
		l.wg.Add(1)
		go l.handle(conn)
	}
}

func (l *wrappedListener) handle(conn net.Conn) {
	defer l.wg.Done()
	serveConn(conn, l.lw.handler, l, l.lw.logger)
}

// serveConn runs a connection through the compiled layer 4 routes; the
// connections the routes hand off go to target.
func serveConn(conn net.Conn, handler layer4.Handler, target handOffTarget, logger *zap.Logger) {
	cx := layer4.WrapConnection(conn, make([]byte, 0, 4096), logger)
	cx.Context = context.WithValue(cx.Context, handOffKey{}, target)
	err := handler.Handle(cx)
	if errors.Is(err, errHandedOff) {
		return // the HTTP server owns it now
	}
	if err != nil {
		logger.Debug("handling connection", zap.String("remote", conn.RemoteAddr().String()), zap.Error(err))
	}
	_ = conn.Close()
}

// Accept returns the next connection for the HTTP server.
func (l *wrappedListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		if l.err == nil {
			return nil, net.ErrClosed
		}
		return nil, l.err
	}
}

// Close closes the listener; connections being matched finish on their
// own.
func (l *wrappedListener) Close() error {
	l.closed.Store(true)
	return l.Listener.Close()
}

// tlsStateConn gives the HTTP server the TLS state of a connection whose
// TLS a layer 4 handler terminated (HTTP/2 needs it).
type tlsStateConn struct {
	net.Conn
	state *tls.ConnectionState
}

func (c *tlsStateConn) ConnectionState() tls.ConnectionState { return *c.state }

// UnmarshalCaddyfile sets up the wrapper from Caddyfile tokens, with the
// syntax of caddy-l4's layer4 listener wrapper:
//
//	fly_layer4 {
//		matching_timeout <duration>
//		@name <matcher> [<args...>]
//		route @name {
//			<handler> [<args...>]
//		}
//	}
func (lw *ListenerWrapper) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // wrapper name
	if d.CountRemainingArgs() > 0 {
		return d.ArgErr()
	}
	return layer4.ParseCaddyfileNestedRoutes(d, &lw.Routes, &lw.MatchingTimeout, nil)
}

// Interface guards
var (
	_ caddy.ListenerWrapper = (*ListenerWrapper)(nil)
	_ caddy.Provisioner     = (*ListenerWrapper)(nil)
	_ caddyfile.Unmarshaler = (*ListenerWrapper)(nil)
)
