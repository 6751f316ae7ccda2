package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

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
