package flyhandlers

import (
	"net"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestListensOn: the wrapper finds its server by the address it listens
// on; a server that names the host exactly wins over one that listens on
// every address.
func TestListensOn(t *testing.T) {
	tcp := func(ip string, port int) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: port} }
	for _, tc := range []struct {
		listen    string
		addr      net.Addr
		ok, exact bool
	}{
		{":443", tcp("::", 443), true, false},
		{":443", tcp("::", 8443), false, false},
		{"127.0.0.1:443", tcp("127.0.0.1", 443), true, true},
		{"127.0.0.1:443", tcp("127.0.0.2", 443), false, false},
		{"[::1]:443", tcp("::1", 443), true, true},
		{"tcp/127.0.0.1:8000-8010", tcp("127.0.0.1", 8005), true, true},
		{"tcp/127.0.0.1:8000-8010", tcp("127.0.0.1", 8011), false, false},
		{"localhost:443", tcp("127.0.0.1", 443), true, false},
		{"unix//run/caddy.sock", &net.UnixAddr{Name: "/run/caddy.sock", Net: "unix"}, true, true},
		{"unix//run/caddy.sock", &net.UnixAddr{Name: "/run/other.sock", Net: "unix"}, false, true},
	} {
		na, err := caddy.ParseNetworkAddress(tc.listen)
		if err != nil {
			t.Fatalf("%s: %v", tc.listen, err)
		}
		if ok, exact := listensOn(na, tc.addr); ok != tc.ok || ok && exact != tc.exact {
			t.Errorf("listensOn(%s, %s) = %v, %v; want %v, %v", tc.listen, tc.addr, ok, exact, tc.ok, tc.exact)
		}
	}
}
