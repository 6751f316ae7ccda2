//go:build linux

package edge

import (
	"net"
	"net/netip"
	"testing"
)

func TestParseProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:07E3":                         "127.0.0.1:2019",
		"00000000:1F90":                         "0.0.0.0:8080",
		"00000000000000000000000000000000:20FB": "[::]:8443",
		"00000000000000000000000001000000:07E3": "[::1]:2019",
		"0000000000000000FFFF00000100007F:0050": "[::ffff:127.0.0.1]:80",
	} {
		got, err := parseProcAddr(in)
		if err != nil || got.String() != want {
			t.Errorf("parseProcAddr(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0100007F", "0100007F:", "01007F:07E3", "ZZ00007F:07E3"} {
		if _, err := parseProcAddr(in); err == nil {
			t.Errorf("parseProcAddr(%q): no error", in)
		}
	}
}

func TestOverlaps(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"127.0.0.1", "127.0.0.1", true},
		{"127.0.0.1", "127.0.0.2", false},
		{"0.0.0.0", "127.0.0.1", true},
		{"127.0.0.1", "::", true},
		{"0.0.0.0", "::1", false},
		{"::ffff:127.0.0.1", "127.0.0.1", true},
		{"::1", "127.0.0.1", false},
	} {
		if got := overlaps(netip.MustParseAddr(tc.a), netip.MustParseAddr(tc.b)); got != tc.want {
			t.Errorf("overlaps(%s, %s) = %v", tc.a, tc.b, got)
		}
	}
}

// TestOwnListenerIsNotForeign: this process's own listener is not
// another process's; the edge's own sockets from a config it replaces
// must not stop it.
func TestOwnListenerIsNotForeign(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	foreign, err := ForeignListeners("tcp", netip.IPv6Unspecified(), func(p int) bool { return p == port })
	if err != nil || len(foreign) != 0 {
		t.Fatalf("ForeignListeners: %v, %v; want none", foreign, err)
	}
}
