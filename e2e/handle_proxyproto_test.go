package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// startProxyProtoMachine serves a machine that requires a PROXY protocol
// header (parsed by go-proxyproto), answers
// "<version> <source> <destination> <first client line>" and closes.
func startProxyProtoMachine(t *testing.T, addr string) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				r := bufio.NewReader(c)
				h, err := proxyproto.Read(r)
				if err != nil {
					fmt.Fprintf(c, "error %v\n", err)
					return
				}
				line, _ := r.ReadString('\n')
				fmt.Fprintf(c, "v%d %s %s %s", h.Version, h.SourceAddr, h.DestinationAddr, line)
			}()
		}
	}()
}

func TestProxyProto(t *testing.T) {
	requireCaddy(t)
	v1Port, v2Port, machinePort := freePort(), freePort(), freePort()
	startProxyProtoMachine(t, "127.0.54.1:"+machinePort)
	mustLoad(t, fmt.Sprintf(`{
	admin %s
	persist_config off
	fly {
		app pp {
			service %s {
				port %s proxy_proto
				port %s proxy_proto {
					proxy_proto_version v2
				}
			}
			machine 00000000000f11 iad 127.0.54.1
		}
	}
	layer4 {
		:%s :%s {
			route {
				proxy_proto
				fly_proxy
			}
		}
	}
}
`, adminAddr, machinePort, v1Port, v2Port, v1Port, v2Port))

	for _, tc := range []struct {
		name, host, port, version string
	}{
		{"v1 ipv4", "127.0.0.1", v1Port, "v1"},
		{"v2 ipv4", "127.0.0.1", v2Port, "v2"},
		{"v1 ipv6", "::1", v1Port, "v1"},
		{"v2 ipv6", "::1", v2Port, "v2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(tc.host, tc.port), 5*time.Second)
			if err != nil {
				t.Fatalf("dialing the edge on %s: %v", tc.host, err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "hello\n")
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			want := fmt.Sprintf("%s %s %s hello\n", tc.version, c.LocalAddr(), c.RemoteAddr())
			if string(got) != want {
				t.Fatalf("the machine saw %q, want %q", got, want)
			}
		})
	}
}

// TestTLSProxyProtoAndMismatch: a ["tls", "proxy_proto"] port, and a
// layer4 route that does not run what the app's port lists.
func TestTLSProxyProtoAndMismatch(t *testing.T) {
	requireCaddy(t)
	tlsPP, wrongRoute, machinePort := freePort(), freePort(), freePort()
	startProxyProtoMachine(t, "127.0.54.2:"+machinePort)
	cfg := fmt.Sprintf(`{
	"admin": {"listen": %q, "config": {"persist": false}},
	"apps": {
		"fly": {"base_domain": "edge.test", "apps": {"tpp": {
			"services": [{"internal_port": %s, "ports": [
				{"port": %s, "handlers": ["tls", "proxy_proto"]},
				{"port": %s, "handlers": ["tls"]}
			]}],
			"machines": [{"id": "00000000000f12", "region": "iad", "address": "127.0.54.2"}]
		}}},
		"tls": {"certificates": {"automate": ["tpp.edge.test"]}, "automation": {"policies": [{"issuers": [{"module": "internal"}]}]}},
		"pki": {"certificate_authorities": {"local": {"install_trust": false}}},
		"layer4": {"servers": {
			"tpp": {"listen": [":%s"], "routes": [{"handle": [{"handler": "fly_tls"}, {"handler": "proxy_proto", "version": "v2"}, {"handler": "fly_proxy"}]}]},
			"wrong": {"listen": [":%s"], "routes": [{"handle": [{"handler": "proxy_proto"}, {"handler": "fly_proxy"}]}]}
		}}
	}
}`, adminAddr, machinePort, tlsPP, wrongRoute, tlsPP, wrongRoute)
	if err := load(t, cfg, "json"); err != nil {
		t.Fatal(err)
	}
	roots := caddyRoots(t, caddyHome)
	var c *tls.Conn
	waitFor(t, "the certificate of tpp.edge.test", func() bool {
		var err error
		c, err = tls.Dial("tcp", "127.0.0.1:"+tlsPP, &tls.Config{ServerName: "tpp.edge.test", RootCAs: roots})
		return err == nil
	})
	defer c.Close()
	fmt.Fprintf(c, "hello\n")
	got, _ := io.ReadAll(c)
	want := fmt.Sprintf("v2 %s %s hello\n", c.LocalAddr(), c.RemoteAddr())
	if string(got) != want {
		t.Fatalf("the machine saw %q, want %q", got, want)
	}

	// port listed as ["tls"], but the route sends plaintext with a PROXY header
	logStart := len(caddyLog.String())
	raw, err := net.DialTimeout("tcp", "127.0.0.1:"+wrongRoute, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(raw, "hello\n")
	if b, _ := io.ReadAll(raw); len(b) != 0 {
		t.Fatalf("a route that does not match the port's handlers reached the machine: %q", b)
	}
	// the log line travels through a pipe: wait for it
	waitFor(t, "the mismatch to be logged", func() bool {
		return strings.Contains(caddyLog.String()[logStart:], "fix the route to match")
	})
}
