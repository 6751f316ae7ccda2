package flyhandlers

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/routing"
)

// newFly provisions a fly app with apps, as Caddy would.
func newFly(t testing.TB, apps map[string]*routing.Application) *routing.App {
	t.Helper()
	fly := &routing.App{Region: "iad", BaseDomain: "edge.test", Apps: apps}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := fly.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fly.Cleanup() })
	return fly
}

// portOf returns the port of a listener.
func portOf(ln net.Listener) int { return ln.Addr().(*net.TCPAddr).Port }

// accepted dials ln and returns the client's end and the edge's end, the
// latter wrapped as caddy-l4's server wraps an accepted connection.
func accepted(t *testing.T, ln net.Listener) (client net.Conn, cx *layer4.Connection) {
	t.Helper()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	client.SetDeadline(time.Now().Add(10 * time.Second))
	return client, layer4.WrapConnection(server, make([]byte, 0, 4096), zap.NewNop())
}

func itoa(n int) string { return strconv.Itoa(n) }
