package routing

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
)

// TestPermission: a certificate only for a name an app answers to, and,
// during a handshake, only where the connection reaches that app.
func TestPermission(t *testing.T) {
	ctx := context.Background()
	v4, shared := netip.MustParseAddr("127.31.0.1"), netip.MustParseAddr("127.21.0.1")
	fly := &App{BaseDomain: "edge.test", Apps: map[string]*Application{}}
	for _, name := range []string{"app0", "app1"} {
		fly.Apps[name] = &Application{
			Services: []*Service{{InternalPort: 8080, Ports: []*Port{{Port: 443, Handlers: []string{"tls", "http"}}}}},
		}
	}
	if err := provision(t, fly); err != nil {
		t.Fatal(err)
	}
	fly.RouteByAddress([]netip.Addr{shared})
	if err := fly.SetLive("app0", &LiveApp{Dedicated: []netip.Addr{v4}}); err != nil {
		t.Fatal(err)
	}
	if err := fly.SetLive("app1", &LiveApp{Shared: []netip.Addr{shared}}); err != nil {
		t.Fatal(err)
	}
	p := &Permission{fly: fly}
	// a handshake's context, as certmagic passes it, for a connection
	// that arrived on addr port 443 (the apps serve 443)
	during := func(addr string) context.Context {
		ln, err := net.Listen("tcp", net.JoinHostPort(addr, "443"))
		if err != nil {
			t.Fatalf("listening on %s:443: %v", addr, err)
		}
		t.Cleanup(func() { ln.Close() })
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		sc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sc.Close() })
		return context.WithValue(ctx, certmagic.ClientHelloInfoCtxKey, &tls.ClientHelloInfo{Conn: sc})
	}
	onV4, onShared := during(v4.String()), during(shared.String())
	for _, tc := range []struct {
		name string
		ctx  context.Context
		host string
		ok   bool
	}{
		{"no handshake, an app's name", ctx, "app1.edge.test", true},
		{"no handshake, no app's name", ctx, "nobody.example", false},
		{"app0's name on its dedicated address", onV4, "app0.edge.test", true},
		{"app1's name on app0's dedicated address", onV4, "app1.edge.test", false},
		{"app1's name on the shared address it holds", onShared, "app1.edge.test", true},
		{"app0's name on a shared address it does not hold", onShared, "app0.edge.test", false},
	} {
		err := p.CertificateAllowed(tc.ctx, tc.host)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want allowed %t", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, caddytls.ErrPermissionDenied) {
			t.Errorf("%s: %v is not a permission denial", tc.name, err)
		}
	}
}
