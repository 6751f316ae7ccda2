package flyhandlers

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
	"github.com/flyedge/caddy-flyedge/routing"
)

// newFlyProxy is a fly_proxy on fly with its defaults, as Provision
// leaves it.
func newFlyProxy(fly *routing.App) *FlyProxy {
	return &FlyProxy{
		DialTimeout: caddy.Duration(time.Second), FailDuration: caddy.Duration(10 * time.Second),
		MaxAttempts: 3, IdleTimeout: caddy.Duration(time.Minute),
		app: fly, dialer: &net.Dialer{Timeout: time.Second}, logger: zap.NewNop(),
	}
}

// tcpApp is an app with one service on edge port port, handlers
// handlers, and machines at the given addresses (iad first, then lhr).
func tcpApp(port, internal int, handlers []string, addrs ...string) *routing.Application {
	app := &routing.Application{Services: []*routing.Service{{InternalPort: internal, Ports: []*routing.Port{{Port: port, Handlers: handlers}}}}}
	for i, a := range addrs {
		region := "iad"
		if i > 0 {
			region = "lhr"
		}
		app.Machines = append(app.Machines, &routing.Machine{ID: "00000000000a0" + string(rune('1'+i)), Region: region, Address: a})
	}
	return app
}

// exchange sends msg, half-closes, and returns all the answer.
func exchange(t *testing.T, c net.Conn, msg string) string {
	t.Helper()
	c.Write([]byte(msg))
	c.(*net.TCPConn).CloseWrite()
	b, _ := io.ReadAll(c)
	return string(b)
}

// TestFlyProxy: a connection reaches a machine of the app that serves
// the edge port; the nearest machine first, the next one when it is
// down; a port no app serves is closed unserved.
func TestFlyProxy(t *testing.T) {
	edge := testkit.Listen(t, "127.0.0.1:0")
	m1 := testkit.Listen(t, "127.0.61.1:0")
	internal := portOf(m1)
	m2 := testkit.Listen(t, net.JoinHostPort("127.0.61.2", itoa(internal)))
	testkit.EchoMachine(t, m1, "near")
	testkit.EchoMachine(t, m2, "far")
	fly := newFly(t, map[string]*routing.Application{
		"tcp": tcpApp(portOf(edge), internal, nil, "127.0.61.1", "127.0.61.2"),
	})
	p := newFlyProxy(fly)

	run := func(msg string) string {
		client, cx := accepted(t, edge)
		done := make(chan error, 1)
		go func() { done <- p.Handle(cx, nil); cx.Close() }()
		got := exchange(t, client, msg)
		if err := <-done; err != nil {
			t.Errorf("Handle: %v", err)
		}
		return got
	}
	if got := run("hello"); got != "near hello" {
		t.Fatalf("got %q, want the nearest machine's echo", got)
	}
	m1.Close() // the nearest machine dies: no check, no error for the client
	if got := run("again"); got != "far again" {
		t.Fatalf("with the nearest machine down: %q, want the next one's echo", got)
	}

	other := testkit.Listen(t, "127.0.0.1:0") // a port no app serves
	client, cx := accepted(t, other)
	if err := p.Handle(cx, nil); err != nil {
		t.Errorf("Handle on a port of no app: %v, want a quiet close", err)
	}
	cx.Close()
	if got := exchange(t, client, "anyone?"); got != "" {
		t.Errorf("a port of no app answered %q", got)
	}
}

// TestFlyProxyHandlerMismatch: a layer4 route that did not run what the
// app's port lists (here: no TLS for a tls port) does not pass the
// connection on.
func TestFlyProxyHandlerMismatch(t *testing.T) {
	edge := testkit.Listen(t, "127.0.0.1:0")
	m := testkit.Listen(t, "127.0.61.3:0")
	testkit.EchoMachine(t, m, "m")
	fly := newFly(t, map[string]*routing.Application{"tls": tcpApp(portOf(edge), portOf(m), []string{"tls"}, "127.0.61.3")})
	client, cx := accepted(t, edge)
	err := newFlyProxy(fly).Handle(cx, nil)
	cx.Close()
	if err == nil || !strings.Contains(err.Error(), "handlers [tls], but the layer4 route ran []") {
		t.Errorf("Handle: %v, want the mismatch named", err)
	}
	if got := exchange(t, client, "plaintext"); got != "" {
		t.Errorf("plaintext reached the machine of a tls port: %q", got)
	}
}

// TestProxyProtoThenFlyProxy: proxy_proto sends the machine a PROXY
// header with the client's and the edge's addresses before the client's
// bytes, in the version of the app's port.
func TestProxyProtoThenFlyProxy(t *testing.T) {
	edge := testkit.Listen(t, "127.0.0.1:0")
	m := testkit.Listen(t, "127.0.61.4:0")
	app := tcpApp(portOf(edge), portOf(m), []string{"proxy_proto"}, "127.0.61.4")
	app.Services[0].Ports[0].ProxyProtoOptions = &routing.ProxyProtoOptions{Version: "v1"}
	fly := newFly(t, map[string]*routing.Application{"pp": app})
	got := make(chan string, 1)
	go func() {
		c, err := m.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- string(b)
	}()
	client, cx := accepted(t, edge)
	pp := &ProxyProto{app: fly}
	go func() {
		pp.Handle(cx, layer4.HandlerFunc(func(cx *layer4.Connection) error { return newFlyProxy(fly).Handle(cx, nil) }))
		cx.Close()
	}()
	exchange(t, client, "payload")
	select {
	case b := <-got:
		la, ra := client.LocalAddr().(*net.TCPAddr), client.RemoteAddr().(*net.TCPAddr)
		want := "PROXY TCP4 " + la.IP.String() + " " + ra.IP.String() + " " + itoa(la.Port) + " " + itoa(ra.Port) + "\r\npayload"
		if b != want {
			t.Errorf("machine got %q, want %q", b, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the machine got nothing")
	}
}
