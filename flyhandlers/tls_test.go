package flyhandlers

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
	"github.com/flyedge/caddy-flyedge/routing"
)

// newFlyTLS is a fly_tls whose connection policy serves cert for every
// name, as a policy with Caddy's certificates would.
func newFlyTLS(t *testing.T, fly *routing.App, cert *tls.Certificate) *TLS {
	t.Helper()
	self, err := SelfSignedCertificate()
	if err != nil {
		t.Fatal(err)
	}
	pol := &caddytls.ConnectionPolicy{TLSConfig: &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil },
		NextProtos:     []string{"h2", "http/1.1", ACMETLS1},
	}}
	return &TLS{HandshakeTimeout: caddy.Duration(5 * time.Second), app: fly, policy: pol, selfSigned: self, logger: zap.NewNop()}
}

// TestFlyTLS: fly_tls terminates TLS with the app port's tls_options and
// passes the plaintext on, recording the route; a client whose name
// reaches no app gets no handshake.
func TestFlyTLS(t *testing.T) {
	edge := testkit.Listen(t, "127.0.0.1:0")
	port := portOf(edge)
	strict := &routing.Port{Port: port, Handlers: []string{"tls"}, TLSOptions: &routing.TLSOptions{ALPN: []string{"http/1.1"}, Versions: []string{"TLSv1.3"}}}
	fly := newFly(t, map[string]*routing.Application{
		"plain":  {Services: []*routing.Service{{InternalPort: 1, Ports: []*routing.Port{{Port: port, Handlers: []string{"tls"}}}}}},
		"strict": {Services: []*routing.Service{{InternalPort: 1, Ports: []*routing.Port{strict}}}},
	})
	cert, err := SelfSignedCertificate()
	if err != nil {
		t.Fatal(err)
	}
	h := newFlyTLS(t, fly, cert)

	type result struct {
		app, plain string
		handled    routing.Handlers
		err        error
	}
	serve := func() (net.Conn, <-chan result) {
		res := make(chan result, 1)
		client, cx := accepted(t, edge)
		go func() {
			var r result
			r.err = h.Handle(cx, layer4.HandlerFunc(func(cx *layer4.Connection) error {
				r.app, _ = cx.GetVar(routing.AppVarKey).(string)
				r.handled = routing.Handled(cx)
				b, _ := io.ReadAll(cx)
				r.plain = string(b)
				return nil
			}))
			cx.Close()
			res <- r
		}()
		return client, res
	}
	browser := []string{"h2", "http/1.1"}
	for _, tc := range []struct {
		name, sni string
		protos    []string
		max       uint16
		app, alpn string
		fail      string
	}{
		{"plain, h2 offered", "plain.edge.test", browser, 0, "plain", "h2", ""},
		{"plain, ACME's TLS-ALPN challenge", "plain.edge.test", []string{ACMETLS1}, 0, "plain", ACMETLS1, ""},
		{"strict: only http/1.1", "strict.edge.test", browser, 0, "strict", "http/1.1", ""},
		{"strict refuses TLS 1.2", "strict.edge.test", browser, tls.VersionTLS12, "", "", "protocol version"},
		{"name of no app", "nobody.edge.test", browser, 0, "", "", "internal error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, res := serve()
			c := tls.Client(raw, &tls.Config{ServerName: tc.sni, InsecureSkipVerify: true, NextProtos: tc.protos, MaxVersion: tc.max})
			err := c.Handshake()
			if tc.fail != "" {
				if err == nil || !strings.Contains(err.Error(), tc.fail) {
					t.Fatalf("handshake: %v, want %q", err, tc.fail)
				}
				raw.Close()
				<-res
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.ConnectionState().NegotiatedProtocol; got != tc.alpn {
				t.Errorf("ALPN %q, want %q", got, tc.alpn)
			}
			c.Write([]byte("secret"))
			c.CloseWrite()
			r := <-res
			if r.err != nil || r.app != tc.app || r.plain != "secret" || r.handled != routing.HandlerTLS {
				t.Errorf("next got app %q, %q, handled %v (err %v); want %s, the plaintext, [tls]", r.app, r.plain, r.handled, r.err, tc.app)
			}
		})
	}
}
