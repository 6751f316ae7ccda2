package ipalloc

import (
	"bytes"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"
)

// clientHello returns the first bytes a TLS client sends for server name
// name.
func clientHello(t testing.TB, name string) []byte {
	t.Helper()
	c, s := net.Pipe()
	defer s.Close()
	go func() {
		tls.Client(c, &tls.Config{ServerName: name, InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}}).Handshake()
		c.Close()
	}()
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	var buf bytes.Buffer
	b := make([]byte, 4096)
	for buf.Len() < 5 || buf.Len() < 5+(int(buf.Bytes()[3])<<8|int(buf.Bytes()[4])) {
		n, err := s.Read(b)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b[:n])
	}
	return buf.Bytes()
}

func TestPeekServerName(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want string
	}{
		{"client hello", clientHello(t, "Web.Example.COM"), "web.example.com"},
		{"no sni", clientHello(t, ""), ""},
		{"plain http", []byte("GET / HTTP/1.1\r\nHost: web.example.com\r\n\r\n"), ""},
		{"postgres ssl request", []byte{0, 0, 0, 8, 4, 210, 22, 47}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := peekServerName(bytes.NewReader(tc.in))
			if err != nil || got != tc.want {
				t.Errorf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	// a truncated ClientHello is an error, not a guess
	hello := clientHello(t, "web.example.com")
	if got, err := peekServerName(bytes.NewReader(hello[:len(hello)/2])); err == nil {
		t.Errorf("truncated hello: %q, no error", got)
	}
}

// FuzzPeekServerName feeds arbitrary first bytes of a connection to the
// shared-address matcher's ClientHello reader: it must not panic, and a
// name it returns is lower case without a trailing dot.
func FuzzPeekServerName(f *testing.F) {
	f.Add(clientHello(f, "app.edge.test"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		name, _ := peekServerName(bytes.NewReader(b))
		if name != strings.ToLower(name) || strings.HasSuffix(name, ".") {
			t.Fatalf("name %q", name)
		}
	})
}
