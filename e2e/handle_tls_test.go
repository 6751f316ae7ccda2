package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
)

// tlsConfig is an edge whose app tlsapp has three tls-only ports: defaults,
// TLS 1.3 + http/1.1 only, and default_self_signed; the tls app issues
// tlsapp.edge.test from Caddy's internal CA.
func tlsConfig(p1, p2, p3, machinePort string) string {
	return fmt.Sprintf(`{
	"admin": {"listen": %q, "config": {"persist": false}},
	"apps": {
		"fly": {"region": "iad", "base_domain": "edge.test", "apps": {
			"tlsapp": {
				"services": [{"internal_port": %s, "ports": [
					{"port": %s, "handlers": ["tls"]},
					{"port": %s, "handlers": ["tls"], "tls_options": {"versions": ["TLSv1.3"], "alpn": ["http/1.1"]}},
					{"port": %s, "handlers": ["tls"], "tls_options": {"default_self_signed": true}}
				]}],
				"machines": [{"id": "00000000000f21", "region": "iad", "address": "127.0.55.1"}]
			}
		}},
		"tls": {
			"certificates": {"automate": ["tlsapp.edge.test"]},
			"automation": {"policies": [{"issuers": [{"module": "internal"}]}]}
		},
		"pki": {"certificate_authorities": {"local": {"install_trust": false}}},
		"layer4": {"servers": {"tls": {
			"listen": [":%s", ":%s", ":%s"],
			"routes": [{"handle": [{"handler": "fly_tls"}, {"handler": "fly_proxy"}]}]
		}}}
	}
}`, adminAddr, machinePort, p1, p2, p3, p1, p2, p3)
}

func TestTLSHandler(t *testing.T) {
	requireCaddy(t)
	p1, p2, p3, machinePort := freePort(), freePort(), freePort(), freePort()
	startMachines(t, machinePort, testMachine{"00000000000f21", "iad", "127.0.55.1"})
	if err := load(t, tlsConfig(p1, p2, p3, machinePort), "json"); err != nil {
		t.Fatal(err)
	}
	roots := caddyRoots(t, caddyHome)

	// wait until the certificate is issued
	waitFor(t, "the certificate of tlsapp.edge.test", func() bool {
		c, err := tls.Dial("tcp", "127.0.0.1:"+p1, &tls.Config{ServerName: "tlsapp.edge.test", RootCAs: roots})
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	t.Run("h2 client: the app receives h2c", func(t *testing.T) {
		_, body, s := get(t, newClient(roots, true), "https://tlsapp.edge.test:"+p1+"/x", nil)
		if s == nil || s.Proto != "HTTP/2.0" {
			t.Fatalf("want the app to receive HTTP/2 cleartext, got %s", body)
		}
	})
	t.Run("http/1.1 client", func(t *testing.T) {
		_, body, s := get(t, newClient(roots, false), "https://tlsapp.edge.test:"+p1+"/x", nil)
		if s == nil || s.Proto != "HTTP/1.1" {
			t.Fatalf("want HTTP/1.1, got %s", body)
		}
	})
	t.Run("alpn option", func(t *testing.T) {
		c, err := tls.Dial("tcp", "127.0.0.1:"+p2, &tls.Config{ServerName: "tlsapp.edge.test", RootCAs: roots, NextProtos: []string{"h2", "http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if p := c.ConnectionState().NegotiatedProtocol; p != "http/1.1" {
			t.Fatalf("negotiated %q on a port with alpn [http/1.1]", p)
		}
	})
	t.Run("versions option refuses TLS 1.2", func(t *testing.T) {
		_, err := tls.Dial("tcp", "127.0.0.1:"+p2, &tls.Config{ServerName: "tlsapp.edge.test", RootCAs: roots, MaxVersion: tls.VersionTLS12})
		if err == nil {
			t.Fatal("a TLS 1.2 client was accepted on a TLSv1.3-only port")
		}
		c, err := tls.Dial("tcp", "127.0.0.1:"+p2, &tls.Config{ServerName: "tlsapp.edge.test", RootCAs: roots})
		if err != nil {
			t.Fatalf("TLS 1.3 client: %v", err)
		}
		if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
			t.Fatalf("version %x", v)
		}
		c.Close()
		c, err = tls.Dial("tcp", "127.0.0.1:"+p1, &tls.Config{ServerName: "tlsapp.edge.test", RootCAs: roots, MaxVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatalf("TLS 1.2 on a port with the default versions: %v", err)
		}
		c.Close()
	})
	t.Run("default_self_signed", func(t *testing.T) {
		for _, tc := range []struct{ name, sni, wantCN string }{
			{"no SNI", "", "flyedge self-signed"},
			{"unknown name", "nobody.example", "flyedge self-signed"},
			{"the app's name", "tlsapp.edge.test", ""},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c, err := tls.Dial("tcp", "127.0.0.1:"+p3, &tls.Config{ServerName: tc.sni, InsecureSkipVerify: true})
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				defer c.Close()
				leaf := c.ConnectionState().PeerCertificates[0]
				if tc.wantCN != "" && leaf.Subject.CommonName != tc.wantCN {
					t.Fatalf("certificate %q, want the self-signed one", leaf.Subject.CommonName)
				}
				if tc.wantCN == "" && !slices.Contains(leaf.DNSNames, "tlsapp.edge.test") {
					t.Fatalf("certificate for %v, want the app's", leaf.DNSNames)
				}
				// the connection still reaches the app
				fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
				b, _ := io.ReadAll(c)
				if !strings.Contains(string(b), "00000000000f21") {
					t.Fatalf("no answer from the machine: %q", b)
				}
			})
		}
	})
	t.Run("without default_self_signed no SNI fails", func(t *testing.T) {
		if c, err := tls.Dial("tcp", "127.0.0.1:"+p1, &tls.Config{InsecureSkipVerify: true}); err == nil {
			c.Close()
			t.Fatal("a client without SNI completed a handshake on a port without default_self_signed")
		}
	})
}

// optionsByNameConfig is an edge without IP pools (apps by host name) whose
// HTTPS server takes fly_tls_options alone among its listener wrappers:
// apps plain (no options) and strict (TLS 1.3 and http/1.1 only) share the
// port, with certificates for their names from the sites' own policies.
const optionsByNameConfig = `{
	admin %[1]s
	persist_config off
	local_certs
	skip_install_trust
	auto_https disable_redirects
	servers :%[2]s {
		protocols h1 h2
		listener_wrappers {
			fly_tls_options
		}
	}
	fly {
		region iad
		base_domain opts.test
		app plain {
			service %[3]s {
				port %[2]s tls http
			}
			machine 00000000000f31 iad 127.0.58.1
		}
		app strict {
			service %[3]s {
				port %[2]s tls http {
					alpn http/1.1
					tls_versions TLSv1.3
				}
			}
			machine 00000000000f32 iad 127.0.58.2
		}
	}
}
https://plain.opts.test:%[2]s, https://strict.opts.test:%[2]s {
	tls internal
	fly_headers
	reverse_proxy {
		dynamic fly
		lb_policy fly
	}
}
`

// TestTLSOptionsByHostName: without IP pools, fly_tls_options finds the
// app by the server name, on top of the connection policy Caddy picks
// for that name.
func TestTLSOptionsByHostName(t *testing.T) {
	requireCaddy(t)
	https, machinePort := freePort(), freePort()
	startMachines(t, machinePort, testMachine{"00000000000f31", "iad", "127.0.58.1"}, testMachine{"00000000000f32", "iad", "127.0.58.2"})
	mustLoad(t, fmt.Sprintf(optionsByNameConfig, adminAddr, https, machinePort))
	roots := caddyRoots(t, caddyHome)
	h2 := newClient(roots, true)
	waitFor(t, "the certificates of plain and strict", func() bool {
		for _, app := range []string{"plain", "strict"} {
			resp, err := h2.Get("https://" + app + ".opts.test:" + https + "/")
			if err != nil {
				return false
			}
			resp.Body.Close()
		}
		return true
	})
	for app, want := range map[string]struct{ proto, machine string }{
		"plain":  {"HTTP/2.0", "00000000000f31"},
		"strict": {"HTTP/1.1", "00000000000f32"},
	} {
		resp, body, s := get(t, h2, "https://"+app+".opts.test:"+https+"/", nil)
		if s == nil || s.Machine != want.machine || resp.Proto != want.proto {
			t.Errorf("%s: over %s, %q; want %s from %s", app, resp.Proto, body, want.proto, want.machine)
		}
	}
	dial := func(app string) error {
		c, err := tls.Dial("tcp", "127.0.0.1:"+https, &tls.Config{ServerName: app + ".opts.test", RootCAs: roots, MaxVersion: tls.VersionTLS12})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dial("plain"); err != nil {
		t.Errorf("plain over TLS 1.2: %v", err)
	}
	if err := dial("strict"); err == nil || !strings.Contains(err.Error(), "protocol version") {
		t.Errorf("strict over TLS 1.2: %v, want a protocol version alert", err)
	}
}

// soloConfig: without IP pools, one app alone on an HTTPS port, with a
// self-signed fallback and http/1.1 only.
const soloConfig = `{
	admin %[1]s
	persist_config off
	local_certs
	skip_install_trust
	auto_https disable_redirects
	servers :%[2]s {
		protocols h1 h2
		listener_wrappers {
			fly_tls_options
		}
	}
	fly {
		region iad
		base_domain solo.test
		app solo {
			service %[3]s {
				port %[2]s tls http {
					alpn http/1.1
					default_self_signed
				}
			}
			machine 00000000000f41 iad 127.0.58.3
		}
	}
}
https://:%[2]s {
	tls internal
	fly_headers
	reverse_proxy {
		dynamic fly
		lb_policy fly
	}
}
`

// TestUnknownNameOnOneAppPort: without IP pools, a port only one app
// serves is that app's whatever name the client sends, for the TLS
// options as for the request (before, fly_tls_options refused a name of
// no app that fly_tls and the HTTP handlers let through).
func TestUnknownNameOnOneAppPort(t *testing.T) {
	requireCaddy(t)
	https, machinePort := freePort(), freePort()
	startMachines(t, machinePort, testMachine{"00000000000f41", "iad", "127.0.58.3"})
	mustLoad(t, fmt.Sprintf(soloConfig, adminAddr, https, machinePort))
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		ForceAttemptHTTP2: true,
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, "127.0.0.1:"+https)
		},
	}}
	resp, body, s := get(t, c, "https://nobody.example:"+https+"/", nil)
	if s == nil || s.Machine != "00000000000f41" {
		t.Fatalf("unknown name: status %d %q; want solo's machine", resp.StatusCode, body)
	}
	if resp.Proto != "HTTP/1.1" || resp.TLS.PeerCertificates[0].Subject.CommonName != "flyedge self-signed" {
		t.Errorf("unknown name: over %s with a certificate for %q; want solo's options (http/1.1, self-signed)", resp.Proto, resp.TLS.PeerCertificates[0].Subject.CommonName)
	}
}

// TestTLSOptionsOnHTTPPort: on the HTTPS port, which Caddy's HTTP server
// serves, each app gets its port's tls_options (fly_tls_options): other
// allows only TLS 1.3 and http/1.1 and falls back to a self-signed
// certificate; web, without options, gets the server's defaults.
func TestTLSOptionsOnHTTPPort(t *testing.T) {
	e := startIPEdge(t)
	allocate(t, adminAddr, "web", "shared_v4")
	allocate(t, adminAddr, "other", "shared_v4")
	webV4 := allocate(t, adminAddr, "web", "v4")
	otherV4 := allocate(t, adminAddr, "other", "v4")
	dial := func(ip, name string, maxVersion uint16) (*tls.Conn, error) {
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", net.JoinHostPort(ip, e.httpsPort), &tls.Config{
			ServerName: name, RootCAs: e.roots, MaxVersion: maxVersion, NextProtos: []string{"h2", "http/1.1"},
			// to see which certificate comes for names the edge has none for
			InsecureSkipVerify: !strings.HasSuffix(name, "."+e.domain),
		})
	}

	// ALPN, through Go's HTTP/2-capable client on the shared address
	shared := via(e.roots, sharedV4)
	for app, proto := range map[string]string{"web": "HTTP/2.0", "other": "HTTP/1.1"} {
		resp, err := shared.Get("https://" + app + "." + e.domain + ":" + e.httpsPort + "/")
		if err != nil {
			t.Fatalf("%s: %v", app, err)
		}
		resp.Body.Close()
		if resp.Proto != proto {
			t.Errorf("%s answered over %s, want %s", app, resp.Proto, proto)
		}
	}

	// versions: TLS 1.2 is refused for other only
	c, err := dial(sharedV4, "web."+e.domain, tls.VersionTLS12)
	if err != nil {
		t.Fatalf("web over TLS 1.2: %v", err)
	}
	if st := c.ConnectionState(); st.Version != tls.VersionTLS12 || st.NegotiatedProtocol != "h2" {
		t.Errorf("web: version %x, ALPN %q; want TLS 1.2 and h2", st.Version, st.NegotiatedProtocol)
	}
	c.Close()
	if c, err := dial(sharedV4, "other."+e.domain, tls.VersionTLS12); err == nil {
		c.Close()
		t.Errorf("other accepted TLS 1.2; its tls_versions are TLSv1.3 only")
	} else if !strings.Contains(err.Error(), "protocol version") {
		t.Errorf("other over TLS 1.2: %v, want a protocol version alert", err)
	}

	// default_self_signed: no SNI on other's own address gets the
	// self-signed certificate, and the request reaches other's machine
	c, err = dial(otherV4, "", 0)
	if err != nil {
		t.Fatalf("other without SNI: %v", err)
	}
	defer c.Close()
	if cn := c.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "flyedge self-signed" {
		t.Errorf("other without SNI got the certificate of %q, want the self-signed one", cn)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", otherV4)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("request over the self-signed connection: %v", err)
	}
	var s testkit.Seen
	err = json.NewDecoder(resp.Body).Decode(&s)
	resp.Body.Close()
	if err != nil || s.Machine != ipOther.id {
		t.Errorf("request over the self-signed connection: status %d, machine %q, %v; want %s", resp.StatusCode, s.Machine, err, ipOther.id)
	}
	// ... and a name the edge will not issue for, too
	if c, err := dial(otherV4, "unknown.example", 0); err != nil {
		t.Errorf("other with an unknown name: %v, want the self-signed certificate", err)
	} else {
		if cn := c.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "flyedge self-signed" {
			t.Errorf("other with an unknown name got the certificate of %q, want the self-signed one", cn)
		}
		c.Close()
	}
	// web has no default_self_signed: no SNI, no handshake
	if c, err := dial(webV4, "", 0); err == nil {
		c.Close()
		t.Errorf("web completed a handshake without SNI; it has no default_self_signed")
	}
}
