package edge

import (
	"net"
	"slices"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/flyedge/caddy-flyedge/flyhandlers"
)

// TestListensOn: the wrapper finds its server by the address it listens
// on; a wildcard listen address owns only the wildcard listener, and an IP
// wins over a host name.
func TestListensOn(t *testing.T) {
	tcp := func(ip string, port int) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: port} }
	for _, tc := range []struct {
		listen string
		addr   net.Addr
		rank   int
	}{
		{":443", tcp("::", 443), 2},
		{":443", tcp("::", 8443), 0},
		{":443", tcp("127.0.0.1", 443), 0},
		{"0.0.0.0:443", tcp("0.0.0.0", 443), 2},
		{"127.0.0.1:443", tcp("127.0.0.1", 443), 2},
		{"127.0.0.1:443", tcp("127.0.0.2", 443), 0},
		{"[::1]:443", tcp("::1", 443), 2},
		{"tcp/127.0.0.1:8000-8010", tcp("127.0.0.1", 8005), 2},
		{"tcp/127.0.0.1:8000-8010", tcp("127.0.0.1", 8011), 0},
		{"localhost:443", tcp("127.0.0.1", 443), 1},
		{"localhost:443", tcp("::", 443), 0},
		{"unix//run/caddy.sock", &net.UnixAddr{Name: "/run/caddy.sock", Net: "unix"}, 2},
		{"unix//run/caddy.sock|0222", &net.UnixAddr{Name: "/run/caddy.sock", Net: "unix"}, 2},
		{"unix//run/caddy.sock", &net.UnixAddr{Name: "/run/other.sock", Net: "unix"}, 0},
	} {
		na, err := caddy.ParseNetworkAddress(tc.listen)
		if err != nil {
			t.Fatalf("%s: %v", tc.listen, err)
		}
		if got := listensOn(na, tc.addr); got != tc.rank {
			t.Errorf("listensOn(%s, %s) = %d, want %d", tc.listen, tc.addr, got, tc.rank)
		}
	}
}

// TestServable: an app's alpn offers only what the HTTP server speaks.
func TestServable(t *testing.T) {
	speaks := []string{"h2", "http/1.1", flyhandlers.ACMETLS1}
	for _, tc := range []struct{ offered, want []string }{
		{[]string{"http/1.1", flyhandlers.ACMETLS1}, []string{"http/1.1", flyhandlers.ACMETLS1}},
		{[]string{"http/1.1", "h2"}, []string{"http/1.1", "h2"}},
		{[]string{"h3", "http/1.1"}, []string{"http/1.1"}},
		{[]string{"echo", flyhandlers.ACMETLS1}, speaks},
	} {
		if got := servable(tc.offered, speaks); !slices.Equal(got, tc.want) {
			t.Errorf("servable(%v) = %v, want %v", tc.offered, got, tc.want)
		}
	}
}
