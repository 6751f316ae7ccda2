package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
)

// startProxyProtoMachine serves a machine that requires a PROXY protocol
// header (parsed by go-proxyproto), answers
// "<version> <source> <destination> <first client line>" and closes.
func startProxyProtoMachine(t *testing.T, addr string) {
	t.Helper()
	testkit.Serve(t, testkit.Listen(t, addr), func(c net.Conn) {
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
	})
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

// TestProxyProtoPeers sends connections through proxy_proto ports to
// nginx (listen ... proxy_protocol) and HAProxy (bind ... accept-proxy),
// which parse the header and answer with the client and destination
// address they learned from it, for v1 and v2, IPv4 and IPv6 clients.
func TestProxyProtoPeers(t *testing.T) {
	requireCaddy(t)
	nginx := requireTool(t, "nginx")
	haproxy := requireTool(t, "haproxy")
	dir := t.TempDir()
	mp := freePort()
	ngxAddr, hapAddr := "127.0.56.1:"+mp, "127.0.56.2:"+mp

	os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(fmt.Sprintf(`
daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr notice;
events { worker_connections 64; }
http {
	access_log off;
	client_body_temp_path %[1]s;
	proxy_temp_path %[1]s;
	fastcgi_temp_path %[1]s;
	uwsgi_temp_path %[1]s;
	scgi_temp_path %[1]s;
	server {
		listen %[2]s proxy_protocol;
		location / {
			default_type text/plain;
			return 200 "$proxy_protocol_addr $proxy_protocol_port $proxy_protocol_server_addr $proxy_protocol_server_port\n";
		}
	}
}
`, dir, ngxAddr)), 0o600)
	startPeer(t, nginx, "-c", filepath.Join(dir, "nginx.conf"), "-p", dir, "-e", "stderr")

	os.WriteFile(filepath.Join(dir, "haproxy.cfg"), []byte(fmt.Sprintf(`
global
	log stderr format raw local0 notice
defaults
	mode http
	timeout connect 5s
	timeout client 10s
	timeout server 10s
frontend fe
	bind %s accept-proxy
	http-request return status 200 content-type text/plain lf-string "%%[src] %%[src_port] %%[dst] %%[dst_port]\n"
`, hapAddr)), 0o600)
	startPeer(t, haproxy, "-db", "-f", filepath.Join(dir, "haproxy.cfg"))
	waitListening(t, ngxAddr)
	waitListening(t, hapAddr)

	ngxV1, ngxV2, hapV1, hapV2 := freePort(), freePort(), freePort(), freePort()
	mustLoad(t, fmt.Sprintf(`{
	admin %s
	persist_config off
	fly {
		app ngx {
			service %s {
				port %s proxy_proto
				port %s proxy_proto {
					proxy_proto_version v2
				}
			}
			machine 00000000000f31 iad 127.0.56.1
		}
		app hap {
			service %s {
				port %s proxy_proto
				port %s proxy_proto {
					proxy_proto_version v2
				}
			}
			machine 00000000000f32 iad 127.0.56.2
		}
	}
	layer4 {
		:%s :%s :%s :%s {
			route {
				proxy_proto
				fly_proxy
			}
		}
	}
}
`, adminAddr, mp, ngxV1, ngxV2, mp, hapV1, hapV2, ngxV1, ngxV2, hapV1, hapV2))

	for _, peer := range []struct{ name, v1, v2 string }{{"nginx", ngxV1, ngxV2}, {"haproxy", hapV1, hapV2}} {
		for _, v := range []struct{ name, port string }{{"v1", peer.v1}, {"v2", peer.v2}} {
			for _, host := range []string{"127.0.0.1", "::1"} {
				t.Run(peer.name+"/"+v.name+"/"+host, func(t *testing.T) {
					c, err := net.DialTimeout("tcp", net.JoinHostPort(host, v.port), 5*time.Second)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(10 * time.Second))
					fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: peer\r\n\r\n")
					resp, _ := io.ReadAll(c)
					_, body, _ := strings.Cut(string(resp), "\r\n\r\n")
					src, dst := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
					want := fmt.Sprintf("%s %d %s %d\n", src.IP, src.Port, dst.IP, dst.Port)
					if body != want {
						t.Fatalf("%s learned %q from the PROXY header, want %q (response %q)", peer.name, body, want, resp)
					}
				})
			}
		}
	}
}
