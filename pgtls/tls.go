// The TLS step of pg_tls: the handshake with the client (after an
// SSLRequest, or direct TLS with ALPN postgresql) for the app its server
// name resolves to, and TLS to the machine's server when upstream_tls asks.

package pgtls

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/flyedge/caddy-flyedge/flyhandlers"
	"github.com/flyedge/caddy-flyedge/routing"
)

// handshake completes the TLS handshake on conn for the app that answers
// to the client's server name on port.
func (h *Handler) handshake(conn net.Conn, direct bool) (*tls.Conn, *routing.Route, error) {
	var rt *routing.Route
	cfg := &tls.Config{
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			if direct && !slices.Contains(hello.SupportedProtos, "postgresql") {
				return nil, errors.New("direct TLS without ALPN postgresql")
			}
			var err error
			if rt, err = h.app.Resolve(conn.LocalAddr(), hello.ServerName); err != nil {
				return nil, err
			}
			cfg, err := h.base.GetConfigForClient(hello)
			if err != nil {
				return nil, err
			}
			cfg = cfg.Clone()
			flyhandlers.WithDefaultServerName(cfg, hello, rt)
			cfg.NextProtos = []string{"postgresql"}
			if h.minVersion != 0 {
				cfg.MinVersion, cfg.MaxVersion = h.minVersion, h.maxVersion
			}
			return cfg, nil
		},
	}
	tc := tls.Server(conn, cfg)
	if err := tc.Handshake(); err != nil {
		if c := h.logger.Check(zapcore.DebugLevel, "TLS handshake failed"); c != nil {
			c.Write(zap.String("remote", conn.RemoteAddr().String()), zap.Error(err))
		}
		return nil, nil, err
	}
	return tc, rt, nil
}

// upstreamTLS negotiates TLS with the machine's PostgreSQL server,
// within cancel_timeout.
func (h *Handler) upstreamTLS(up net.Conn) (net.Conn, error) {
	if err := up.SetDeadline(time.Now().Add(time.Duration(h.CancelTimeout))); err != nil {
		return nil, err
	}
	if _, err := up.Write(binary.BigEndian.AppendUint32([]byte{0, 0, 0, 8}, sslRequestCode)); err != nil {
		return nil, err
	}
	var answer [1]byte
	if _, err := io.ReadFull(up, answer[:]); err != nil {
		return nil, fmt.Errorf("upstream TLS: %w", err)
	}
	if answer[0] != 'S' {
		return nil, errors.New("upstream TLS: the machine's server does not do TLS")
	}
	name := h.UpstreamTLS.ServerName
	if name == "" {
		name, _, _ = net.SplitHostPort(up.RemoteAddr().String())
	}
	tc := tls.Client(up, &tls.Config{ServerName: name, InsecureSkipVerify: h.UpstreamTLS.InsecureSkipVerify, MinVersion: tls.VersionTLS12})
	if err := tc.Handshake(); err != nil {
		return nil, fmt.Errorf("upstream TLS: %w", err)
	}
	if err := up.SetDeadline(time.Time{}); err != nil {
		return nil, err
	}
	return tc, nil
}

// prefixConn gives back bytes already read before the connection's own.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
