package flyhandlers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/flyedge/caddy-flyedge/routing"
)

func init() {
	caddy.RegisterModule(new(FlyProxy))
}

// FlyProxy is a terminal layer4 handler that proxies a connection to a
// machine of its app: the app is found by routing.App.Resolve (by the
// address, the TLS server name or the edge port), and the machine is
// the nearest healthy one, spreading connections among the machines of a
// region. It reaches the machine through routing.Route.Connect: a
// machine that refuses the connection, or does not accept it within
// dial_timeout, is left out and the next nearest is tried, within the
// fly app's failover bounds, so the client sees no error while any
// machine of the app can be reached.
//
// The handlers that ran before it must be the ones the app's port lists
// in the fly config (fly_tls for "tls", proxy_proto for "proxy_proto",
// pg_tls for "pg_tls"); otherwise the connection is refused and the
// mismatch logged, so plaintext never reaches a port that promises TLS.
// A connection for no app is closed (default deny).
//
// Bytes are relayed untouched in both directions, half-close included.
// When the client's connection is plain TCP (no TLS terminated), the
// relay is zero-copy for bulk transfers: after the first 64 KiB of a
// direction, the kernel moves data between the two sockets (splice on
// Linux); short exchanges stay on read/write, which costs fewer calls.
// A connection on which no byte moves in either direction for
// idle_timeout is closed, on both sides.
//
//	layer4 {
//		:5000 {
//			route {
//				fly_proxy
//			}
//		}
//	}
type FlyProxy struct {
	// How long to wait for a machine to accept the connection.
	// Default: 3s
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// Deprecated: set fail_duration in the fly app's failover, which
	// every protocol follows. When set, it replaces the app's for this
	// handler's connections, and a warning is logged at load.
	// Default: the fly app's failover fail_duration
	FailDuration caddy.Duration `json:"fail_duration,omitempty"`

	// Deprecated: set attempts in the fly app's failover, which every
	// protocol follows. When set, it replaces the app's for this
	// handler's connections, and a warning is logged at load.
	// Default: the fly app's failover attempts
	MaxAttempts int `json:"max_attempts,omitempty"`

	// How long a connection may stay open with no byte moving in either
	// direction; then the edge closes both the client's and the
	// machine's connection. It bounds what a client and a machine that
	// both say nothing can hold.
	// Default: 10m
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`

	app    *routing.App
	dialer *net.Dialer
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*FlyProxy) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.fly_proxy",
		New: func() caddy.Module { return new(FlyProxy) },
	}
}

// Provision finds the fly app and fills defaults.
func (p *FlyProxy) Provision(ctx caddy.Context) error {
	p.logger = ctx.Logger()
	app, err := routing.FromContext(ctx)
	if err != nil {
		return err
	}
	p.app = app
	if p.DialTimeout == 0 {
		p.DialTimeout = caddy.Duration(3 * time.Second)
	}
	if p.FailDuration != 0 || p.MaxAttempts != 0 {
		p.logger.Warn(`fly_proxy's max_attempts and fail_duration are deprecated: set them once for every protocol in the fly app, "failover { attempts <n> fail_duration <duration> }"; this handler's values still apply to its connections`,
			zap.Int("max_attempts", p.MaxAttempts), zap.Duration("fail_duration", time.Duration(p.FailDuration)))
	}
	if p.IdleTimeout == 0 {
		p.IdleTimeout = caddy.Duration(10 * time.Minute)
	}
	p.dialer = &net.Dialer{Timeout: time.Duration(p.DialTimeout)}
	return nil
}

// Validate checks the options.
func (p *FlyProxy) Validate() error {
	if p.DialTimeout < 0 || p.FailDuration < 0 || p.MaxAttempts < 0 || p.IdleTimeout < 0 {
		return errors.New("dial_timeout, fail_duration, max_attempts and idle_timeout must not be negative")
	}
	return nil
}

// Handle proxies the connection to a machine of its app.
func (p *FlyProxy) Handle(cx *layer4.Connection, _ layer4.Handler) error {
	rt, err := p.app.RouteForConn(cx)
	if err != nil {
		// default deny: close quietly, as for any port nobody serves
		if c := p.logger.Check(zapcore.DebugLevel, "connection denied"); c != nil {
			c.Write(zap.String("remote", cx.RemoteAddr().String()), zap.String("local", cx.LocalAddr().String()), zap.Error(err))
		}
		return nil
	}
	if err := checkHandlers(cx, rt); err != nil {
		return err // a config mistake: caddy-l4 logs it as an error
	}
	over := routing.Failover{Attempts: p.MaxAttempts, FailDuration: p.FailDuration}
	up, i, release, err := rt.Connect(cx.Context, routing.Preference{}, over, func(i int) (net.Conn, error) {
		return p.dialer.DialContext(cx.Context, "tcp", rt.MachineDial(i))
	})
	if err != nil {
		return err
	}
	defer release()
	defer up.Close()
	if b := UpstreamPreamble(cx); len(b) > 0 {
		if _, err := up.Write(b); err != nil {
			return fmt.Errorf("writing to machine %s: %w", rt.MachineID(i), err)
		}
	}
	if wrap := upstreamWrapper(cx); wrap != nil {
		wrapped, err := wrap(up)
		if err != nil {
			return fmt.Errorf("machine %s: %w", rt.MachineID(i), err)
		}
		defer wrapped.Close()
		up = wrapped
	}
	if c := p.logger.Check(zapcore.DebugLevel, "machine selected"); c != nil {
		c.Write(zap.String("app", rt.App), zap.String("machine", rt.MachineID(i)), zap.String("region", rt.MachineRegion(i)))
	}
	defer rt.OpenConn()()
	// destroying the app through the admin API ends its connections
	defer context.AfterFunc(rt.AppContext(), func() {
		_ = cx.Close()
		_ = up.Close()
	})()
	in, out, err := Relay(cx, up, time.Duration(p.IdleTimeout))
	if rt.AppContext().Err() != nil {
		if c := p.logger.Check(zapcore.DebugLevel, "connection closed: app destroyed"); c != nil {
			c.Write(zap.String("app", rt.App), zap.String("machine", rt.MachineID(i)))
		}
		return nil
	}
	rt.CountBytes(in, out)
	if errors.Is(err, ErrIdle) {
		if c := p.logger.Check(zapcore.DebugLevel, "idle connection closed"); c != nil {
			c.Write(zap.String("app", rt.App), zap.String("machine", rt.MachineID(i)), zap.Duration("idle_timeout", time.Duration(p.IdleTimeout)))
		}
		return nil
	}
	return err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	fly_proxy {
//		dial_timeout <duration>
//		fail_duration <duration>
//		max_attempts <n>
//		idle_timeout <duration>
//	}
//
// fail_duration and max_attempts are deprecated (see FailDuration).
func (p *FlyProxy) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		var v string
		if !d.AllArgs(&v) {
			return d.ArgErr()
		}
		switch opt {
		case "dial_timeout", "fail_duration", "idle_timeout":
			dst := map[string]*caddy.Duration{"dial_timeout": &p.DialTimeout, "fail_duration": &p.FailDuration, "idle_timeout": &p.IdleTimeout}[opt]
			if *dst != 0 {
				return d.Errf("%s already specified", opt)
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("%s %q: %v", opt, v, err)
			}
			*dst = caddy.Duration(dur)
		case "max_attempts":
			if p.MaxAttempts != 0 {
				return d.Err("max_attempts already specified")
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return d.Errf("max_attempts %q: want a positive number", v)
			}
			p.MaxAttempts = n
		default:
			return d.Errf("unrecognized fly_proxy option '%s'", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*FlyProxy)(nil)
	_ caddy.Validator       = (*FlyProxy)(nil)
	_ layer4.NextHandler    = (*FlyProxy)(nil)
	_ caddyfile.Unmarshaler = (*FlyProxy)(nil)
)
