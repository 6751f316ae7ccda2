package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Addresses of the IP assignment tests: 127.0.0.0/8 is all local on
// Linux, so the edge's "anycast" addresses are loopback ones.
const (
	sharedV4 = "127.20.0.1"
	v4Pool   = "127.30.0.0/24"
)

// machines of the apps web, other and raw
var (
	ipWeb    = testMachine{"0000000000f101", "iad", "127.0.57.1"}
	ipOther  = testMachine{"0000000000f102", "iad", "127.0.57.2"}
	ipRaw    = testMachine{"0000000000f103", "iad", "127.0.57.3"}
	ipSecure = testMachine{"0000000000f104", "iad", "127.0.57.4"}
)

// ipEdge is an edge that routes by destination address: apps web and
// other (http and tls+http; other's tls_options allow only TLS 1.3 and
// http/1.1, with a self-signed fallback), and raw (TCP pass-through on the same port
// as the HTTPS of the others), with its own storage folder.
type ipEdge struct {
	httpPort, httpsPort, machinePort, rawPort string
	storage, domain                           string
	roots                                     *x509.CertPool
}

const ipEdgeConfig = `{
	admin %[1]s
	persist_config off
	local_certs
	skip_install_trust
	auto_https disable_redirects
	storage file_system %[2]s
	fly {
		region iad
		base_domain %[13]s
		app web {
			service %[5]s {
				port %[3]s http
				port %[4]s tls http
			}
			machine %[7]s iad %[8]s
		}
		app other {
			service %[5]s {
				port %[3]s http
				port %[4]s tls http {
					alpn http/1.1
					tls_versions TLSv1.3
					default_self_signed
				}
			}
			machine %[9]s iad %[10]s
		}
		app raw {
			service %[6]s {
				port %[4]s
			}
			machine %[11]s iad %[12]s
		}
		app secure {
			service %[6]s {
				port %[4]s tls
			}
			machine %[14]s iad %[15]s
		}
	}
	fly_ips {
		v6 ::1/128
		shared_v4 ` + sharedV4 + `
		v4 ` + v4Pool + `
		auto_allocate off
		http_port %[3]s
		https_port %[4]s
	}
	on_demand_tls {
		permission fly
	}
	servers :%[4]s {
		listener_wrappers {
			fly_layer4 {
				@raw fly_app {
					handlers none
				}
				route @raw {
					fly_proxy
				}
				@tls fly_app {
					handlers tls
				}
				route @tls {
					fly_tls
					fly_proxy
				}
			}
			tls
			fly_tls_options
		}
	}
}
http://:%[3]s, https://:%[4]s {
	tls internal {
		on_demand
	}
	@app fly_app
	handle @app {
		header X-Served-App {http.vars.fly.app}
		force_https
		fly_headers
		reverse_proxy {
			dynamic fly
			lb_policy fly
			transport fly
		}
	}
	handle {
		abort
	}
}
`

var edgeCount int

func startIPEdge(t *testing.T) *ipEdge {
	t.Helper()
	requireCaddy(t)
	// a base domain of its own: Caddy caches certificates across configs,
	// and each edge's storage has its own CA
	edgeCount++
	e := &ipEdge{httpPort: freePort(), httpsPort: freePort(), machinePort: freePort(), rawPort: freePort(), storage: t.TempDir(),
		domain: fmt.Sprintf("%s-%d.test", strings.ToLower(t.Name()), edgeCount)}
	startMachines(t, e.machinePort, ipWeb, ipOther)
	startSinks(t, e.rawPort, 0, ipRaw, ipSecure)
	mustLoad(t, fmt.Sprintf(ipEdgeConfig, adminAddr, e.storage, e.httpPort, e.httpsPort, e.machinePort, e.rawPort,
		ipWeb.id, ipWeb.ip, ipOther.id, ipOther.ip, ipRaw.id, ipRaw.ip, e.domain, ipSecure.id, ipSecure.ip))
	e.roots = storageRoots(t, e.storage)
	return e
}

// TestAddressRouting: a dedicated address goes to its app whatever the
// host name; a shared address to the app that holds it and answers to
// the host name; every other connection is closed. On one port, raw TCP
// on an app's dedicated IPv4 runs beside tls+http on the shared IPv4.
func TestAddressRouting(t *testing.T) {
	e := startIPEdge(t)
	if got := allocate(t, adminAddr, "web", "v6"); got != "::1" {
		t.Fatalf("allocate-v6 gave %s, want ::1 (the pool's one address)", got)
	}
	allocate(t, adminAddr, "web", "shared_v4")
	allocate(t, adminAddr, "other", "shared_v4")
	rawV4 := allocate(t, adminAddr, "raw", "v4")
	if rawV4 != "127.30.0.1" {
		t.Fatalf("allocate-v4 gave %s, want 127.30.0.1", rawV4)
	}

	shared := via(e.roots, sharedV4)
	for _, tc := range []struct {
		name, url, want string
	}{
		{"shared, http, web", "http://web." + e.domain + ":" + e.httpPort + "/", ipWeb.id},
		{"shared, http, other", "http://other." + e.domain + ":" + e.httpPort + "/", ipOther.id},
		{"shared, https, web", "https://web." + e.domain + ":" + e.httpsPort + "/", ipWeb.id},
		{"shared, https, other", "https://other." + e.domain + ":" + e.httpsPort + "/", ipOther.id},
	} {
		if got, err := machineOf(shared, tc.url); err != nil || got != tc.want {
			t.Errorf("%s: machine %q, %v; want %s", tc.name, got, err, tc.want)
		}
	}
	// the dedicated IPv6 address: any host name reaches web
	v6 := via(e.roots, "::1")
	if got, err := machineOf(v6, "http://whatever.example:"+e.httpPort+"/"); err != nil || got != ipWeb.id {
		t.Errorf("dedicated v6: machine %q, %v; want %s", got, err, ipWeb.id)
	}
	// default deny
	for _, tc := range []struct {
		name string
		c    *http.Client
		url  string
	}{
		{"unknown host on the shared address", shared, "http://nobody." + e.domain + ":" + e.httpPort + "/"},
		{"app without the shared address", shared, "http://raw." + e.domain + ":" + e.httpPort + "/"},
		{"address of no app", via(e.roots, "127.0.0.1"), "http://web." + e.domain + ":" + e.httpPort + "/"},
		{"free address of the dedicated pool", via(e.roots, "127.30.0.2"), "http://web." + e.domain + ":" + e.httpPort + "/"},
		{"unknown name over TLS", shared, "https://www.example.com:" + e.httpsPort + "/"},
		{"no name over TLS on the shared address", shared, "https://" + sharedV4 + ":" + e.httpsPort + "/"},
		{"dedicated address, port its app has no service on", via(e.roots, rawV4), "http://raw." + e.domain + ":" + e.httpPort + "/"},
	} {
		if got, err := machineOf(tc.c, tc.url); err == nil {
			t.Errorf("%s: reached machine %s, want the connection refused", tc.name, got)
		}
	}
	// raw TCP on raw's dedicated v4, on the port the others use for https
	id, gotHash, _, _ := exchange(t, net.JoinHostPort(rawV4, e.httpsPort), 1<<20, "raw")
	if id != ipRaw.id || gotHash != hashOf(stream("raw"), 1<<20) {
		t.Errorf("raw TCP through %s: machine %s, hash %s", rawV4, id, gotHash)
	}
	// tls-only on the shared address of the same port: the matcher reads
	// the server name from the ClientHello, fly_tls terminates
	allocate(t, adminAddr, "secure", "shared_v4")
	tc, err := tls.Dial("tcp", net.JoinHostPort(sharedV4, e.httpsPort), &tls.Config{ServerName: "secure." + e.domain, RootCAs: e.roots})
	if err != nil {
		t.Fatalf("tls to secure on the shared address: %v", err)
	}
	tc.SetDeadline(time.Now().Add(5 * time.Second))
	tc.Write([]byte("over tls"))
	tc.CloseWrite()
	if b, _ := io.ReadAll(tc); !strings.HasPrefix(string(b), ipSecure.id+" ") {
		t.Errorf("tls on the shared address: machine answered %q, want %s", b, ipSecure.id)
	}
	tc.Close()
	// the app's name is a placeholder
	if resp, err := shared.Get("https://other." + e.domain + ":" + e.httpsPort + "/"); err != nil {
		t.Errorf("{http.vars.fly.app}: %v", err)
	} else {
		resp.Body.Close()
		if got := resp.Header.Get("X-Served-App"); got != "other" {
			t.Errorf("{http.vars.fly.app} is %q, want other", got)
		}
	}
	// a layer 4 connection to an address of no app is closed unserved
	c, err := net.Dial("tcp", net.JoinHostPort("127.30.0.3", e.httpsPort))
	if err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("hello\r\n\r\n"))
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		c.Close()
		if strings.Contains(string(b), ipRaw.id) {
			t.Errorf("a connection to an unassigned address reached raw's machine")
		}
	}
}

// TestCustomHostname: a host name nobody registered gets no certificate
// and no route; once added through the certs API, the app answers to it
// on the shared address with a certificate for it.
func TestCustomHostname(t *testing.T) {
	e := startIPEdge(t)
	allocate(t, adminAddr, "other", "shared_v4")
	shared := via(e.roots, sharedV4)
	site := e.domain + ".example" // outside the base domain, whose names are the apps' own
	custom := "shop." + site
	url := "https://" + custom + ":" + e.httpsPort + "/"
	_, err := machineOf(shared, url)
	if err == nil || !strings.Contains(err.Error(), "tls") {
		t.Fatalf("an unregistered host name: %v, want a failed TLS handshake", err)
	}
	status, body := call(t, adminAddr, http.MethodPost, "/fly/apps/other/certs", `{"hostname":"`+custom+`"}`, nil)
	if status != http.StatusCreated {
		t.Fatalf("certs add: %d %s", status, body)
	}
	if got, err := machineOf(shared, url); err != nil || got != ipOther.id {
		t.Fatalf("after certs add: machine %q, %v; want %s", got, err, ipOther.id)
	}
	if got, err := machineOf(shared, "http://"+custom+":"+e.httpPort+"/"); err != nil || got != ipOther.id {
		t.Errorf("plain http after certs add: machine %q, %v", got, err)
	}
	// a wildcard covers the first label
	if status, body := call(t, adminAddr, http.MethodPost, "/fly/apps/other/certs", `{"hostname":"*.wild.`+site+`"}`, nil); status != http.StatusCreated {
		t.Fatalf("certs add wildcard: %d %s", status, body)
	}
	if got, err := machineOf(shared, "https://a.wild."+site+":"+e.httpsPort+"/"); err != nil || got != ipOther.id {
		t.Errorf("a name under the wildcard: machine %q, %v; want %s", got, err, ipOther.id)
	}
	if got, err := machineOf(shared, "http://wild."+site+":"+e.httpPort+"/"); err == nil {
		t.Errorf("the wildcard's own base reached machine %s", got)
	}
	if status, _ := call(t, adminAddr, http.MethodDelete, "/fly/apps/other/certs/"+custom, "", nil); status != http.StatusNoContent {
		t.Fatalf("certs remove: %d", status)
	}
	if got, err := machineOf(via(e.roots, sharedV4), "http://"+custom+":"+e.httpPort+"/"); err == nil {
		t.Errorf("a removed host name still reaches machine %s", got)
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
	var s seen
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

// TestSwitchToSharedIPv4 follows the reference's switch from a dedicated
// to a shared IPv4 address (allocate shared, check it with --resolve,
// move the DNS, release the dedicated one) while a client sends requests
// all along: none is lost.
func TestSwitchToSharedIPv4(t *testing.T) {
	e := startIPEdge(t)
	dedicated := allocate(t, adminAddr, "web", "v4")
	url := "http://web." + e.domain + ":" + e.httpPort + "/"

	// the client resolves the app's host name to the address in dns
	var dns atomic.Value
	dns.Store(dedicated)
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		_, port, _ := net.SplitHostPort(addr)
		return new(net.Dialer).DialContext(ctx, network, net.JoinHostPort(dns.Load().(string), port))
	}}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	stop := make(chan struct{})
	type result struct {
		sent   int
		failed []string
	}
	done := make(chan result)
	go func() {
		var r result
		for {
			select {
			case <-stop:
				done <- r
				return
			default:
			}
			r.sent++
			if got, err := machineOf(client, url); err != nil || got != ipWeb.id {
				r.failed = append(r.failed, fmt.Sprintf("request %d via %s: machine %q, %v", r.sent, dns.Load(), got, err))
			}
		}
	}()
	time.Sleep(200 * time.Millisecond)

	// 1. allocate a shared address
	shared := allocate(t, adminAddr, "web", "shared_v4")
	// 3. check the app works through it, like curl --resolve
	if got, err := machineOf(via(e.roots, shared), url); err != nil || got != ipWeb.id {
		t.Fatalf("checking the shared address: machine %q, %v", got, err)
	}
	time.Sleep(200 * time.Millisecond)
	// 2./5. the DNS record moves to the shared address; caches clear
	dns.Store(shared)
	tr.CloseIdleConnections()
	time.Sleep(200 * time.Millisecond)
	// 6. release the dedicated address
	if status, body := call(t, adminAddr, http.MethodDelete, "/fly/apps/web/ips/"+dedicated, "", nil); status != http.StatusNoContent {
		t.Fatalf("release: %d %s", status, body)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	r := <-done
	if len(r.failed) > 0 || r.sent < 20 {
		t.Fatalf("%d requests, %d failed: %v", r.sent, len(r.failed), r.failed)
	}
	t.Logf("%d requests during the switch, none lost", r.sent)
	// the released address no longer reaches the app
	if got, err := machineOf(via(e.roots, dedicated), url); err == nil {
		t.Errorf("the released address still reaches machine %s", got)
	}
}

// TestAdminAPIErrors: the admin API refuses bad calls with the statuses
// and JSON of the contract, the CLI prints the message and exits
// non-zero, and /fly/ is not served on the public ports.
func TestAdminAPIErrors(t *testing.T) {
	e := startIPEdge(t)
	allocate(t, adminAddr, "web", "shared_v4")
	allocate(t, adminAddr, "web", "v6") // the pool's only address
	for _, tc := range []struct {
		method, path, body string
		status             int
		msg                string
	}{
		{"POST", "/fly/apps/web/ips", `{"type":"v5"}`, 400, `type: \"v5\" (want v6, shared_v4 or v4)`},
		{"POST", "/fly/apps/web/ips", `{"type":`, 400, "request body"},
		{"POST", "/fly/apps/web/ips", `{"kind":"v6"}`, 400, `unknown field \"kind\"`},
		{"POST", "/fly/apps/web/ips", `{"type":"v4"} {"type":"v6"} garbage`, 400, "one JSON value expected, more follows"},
		{"DELETE", "/fly/apps/web/ips/fe80::1%25eth0", "", 400, `\"fe80::1%eth0\": an edge address has no zone`},
		{"POST", "/fly/apps/nope/ips", `{"type":"v6"}`, 404, `unknown app \"nope\"`},
		{"POST", "/fly/apps/other/ips", `{"type":"v6"}`, 409, "the v6 pool is exhausted"},
		{"DELETE", "/fly/apps/other/ips/::1", "", 404, "app other does not hold ::1"},
		{"DELETE", "/fly/apps/web/ips/not-an-ip", "", 400, `\"not-an-ip\" is not an IP address`},
		{"POST", "/fly/apps/other/certs", `{"hostname":"web.` + e.domain + `"}`, 409, "hostname web." + e.domain + " is taken by app web"},
		{"POST", "/fly/apps/other/certs", `{"hostname":"bad host"}`, 400, "is not a valid host name"},
		{"DELETE", "/fly/apps/other/certs/www.nowhere.example", "", 404, "app other has no host name www.nowhere.example"},
		{"GET", "/fly/apps/web/machines/00000000000bad", "", 404, "app web has no machine 00000000000bad"},
		{"POST", "/fly/apps/web/machines", `{"id":"xyz","region":"iad","address":"127.0.0.1"}`, 400, "must be 14 lower-case hexadecimal characters"},
		{"POST", "/fly/apps/web/machines", `{"region":"zzz","address":"127.0.0.1"}`, 400, `region: \"zzz\"`},
		{"POST", "/fly/apps/other/machines", `{"id":"` + ipWeb.id + `","region":"iad","address":"127.0.0.1"}`, 409, "belongs to app web"},
		{"DELETE", "/fly/apps/web/machines/" + ipWeb.id, "", 409, "is defined in the config"},
		{"POST", "/fly/apps/web/machines/00000000000bad/egress-ips", "", 404, "app web has no machine 00000000000bad"},
		{"POST", "/fly/apps/web/machines/" + ipWeb.id + "/egress-ips", "", 409, "egress pairs need both an egress_v4 and an egress_v6 pool"},
		// every body is one JSON object, keys exact and once each
		{"POST", "/fly/apps/web/machines", `{"region":"iad","address":"127.0.0.1","Region":"lhr"}`, 400, `unknown field \"Region\" (field names are case-sensitive: did you mean \"region\"?)`},
		{"POST", "/fly/apps/web/ips", `{"type":"v6","type":"v4"}`, 400, `field \"type\" appears twice`},
		{"POST", "/fly/apps/web/certs", `null`, 400, "request body: null (want an object)"},
		{"PUT", "/fly/apps/strict", `{"services":[]}}`, 400, "apps.strict: one JSON value expected, more follows"},
		{"PUT", "/fly/apps/strict", `null`, 400, "apps.strict: null (want an object)"},
		{"PUT", "/fly/apps/strict", `{"org":"a","org":"b"}`, 400, `apps.strict: field \"org\" appears twice`},
		{"PATCH", "/fly/apps/web/ips", "", 405, "method PATCH not allowed"},
		{"GET", "/fly/nothing", "", 404, "no such endpoint"},
	} {
		status, body := call(t, adminAddr, tc.method, tc.path, tc.body, nil)
		var e struct{ Error string }
		jerr := json.Unmarshal([]byte(body), &e)
		if status != tc.status || jerr != nil || !strings.Contains(body, tc.msg) {
			t.Errorf("%s %s %s: %d %s; want %d with JSON error containing %q", tc.method, tc.path, tc.body, status, body, tc.status, tc.msg)
		}
	}

	// the CLI: readable message, non-zero exit
	out, err := exec.Command(caddyBin, "fly", "ips", "allocate-v6", "-a", "other", "--address", adminAddr).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Error: the v6 pool is exhausted (HTTP 409)") {
		t.Errorf("CLI on a 409: %v\n%s", err, out)
	}
	out, err = exec.Command(caddyBin, "fly", "ips", "list", "-a", "web", "--address", adminAddr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "v4       127.20.0.1  public (shared)") || !strings.Contains(string(out), "v6       ::1") {
		t.Errorf("caddy fly ips list: %v\n%s", err, out)
	}
	// with --json, the error is JSON on stdout too
	stdout, err := exec.Command(caddyBin, "fly", "ips", "allocate-v6", "-a", "other", "--json", "--address", adminAddr).Output()
	var je struct{ Error string }
	if err == nil || json.Unmarshal(stdout, &je) != nil || je.Error != "the v6 pool is exhausted (HTTP 409)" {
		t.Errorf("CLI --json on a 409: %v, stdout %q", err, stdout)
	}
	// a command it does not know is a usage error
	for _, args := range [][]string{{"fly", "bogus"}, {"fly", "ips", "bogus"}, {"fly", "machine", "egress-ip"}} {
		out, err := exec.Command(caddyBin, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Usage:") {
			t.Errorf("caddy %s: %v, want a non-zero exit with the usage\n%s", strings.Join(args, " "), err, out)
		}
	}

	// the API is on the admin listener only
	for _, u := range []string{"http://127.0.0.1:" + e.httpPort + "/fly/ips", "http://" + sharedV4 + ":" + e.httpPort + "/fly/ips"} {
		resp, err := http.Get(u)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), "127.20.0.1") {
				t.Errorf("%s served the admin API: %s", u, b)
			}
		}
	}
}

// TestLiveMachines: machines registered through the admin API (and the
// CLI) take traffic at once, without a config reload, and leave it when
// deregistered.
func TestLiveMachines(t *testing.T) {
	e := startIPEdge(t)
	allocate(t, adminAddr, "other", "shared_v4")
	extra := testMachine{"0000000000f1a1", "iad", "127.0.57.11"}
	startMachines(t, e.machinePort, extra)
	url := "http://other." + e.domain + ":" + e.httpPort + "/"
	shared := via(e.roots, sharedV4)
	out, err := exec.Command(caddyBin, "fly", "machine", "add", "-a", "other", "--id", extra.id, "--region", "iad",
		"--machine-address", extra.ip, "--address", adminAddr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Machine "+extra.id+" added to other") {
		t.Fatalf("caddy fly machine add: %v\n%s", err, out)
	}
	status, body := call(t, adminAddr, http.MethodPost, "/fly/apps/other/machines", `{"id":"`+extra.id+`","region":"iad","address":"`+extra.ip+`"}`, nil)
	if status != http.StatusConflict {
		t.Errorf("adding a machine twice: %d %s, want 409", status, body)
	}
	status, body = call(t, adminAddr, http.MethodPut, "/fly/apps/other/machines/"+ipOther.id, `{"region":"iad","address":"127.0.57.99"}`, nil)
	if status != http.StatusConflict {
		t.Errorf("updating a config machine: %d %s, want 409", status, body)
	}
	seenExtra := false
	for range 40 {
		if got, _ := machineOf(shared, url); got == extra.id {
			seenExtra = true
			break
		}
	}
	if !seenExtra {
		t.Fatalf("the registered machine got no request out of 40")
	}
	out, err = exec.Command(caddyBin, "fly", "machine", "list", "-a", "other", "--address", adminAddr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), extra.id) || !strings.Contains(string(out), ipOther.id) {
		t.Errorf("caddy fly machine list: %v\n%s", err, out)
	}
	// stopped: no traffic
	status, _ = call(t, adminAddr, http.MethodPut, "/fly/apps/other/machines/"+extra.id, `{"region":"iad","address":"`+extra.ip+`","state":"stopped"}`, nil)
	if status != http.StatusOK {
		t.Fatalf("machine update: %d", status)
	}
	for range 20 {
		if got, err := machineOf(shared, url); err != nil || got != ipOther.id {
			t.Fatalf("with the registered machine stopped: machine %q, %v; want %s", got, err, ipOther.id)
		}
	}
	if status, _ := call(t, adminAddr, http.MethodDelete, "/fly/apps/other/machines/"+extra.id, "", nil); status != http.StatusNoContent {
		t.Fatalf("machine remove: %d", status)
	}
	var ms []map[string]string
	call(t, adminAddr, http.MethodGet, "/fly/apps/other/machines", "", &ms)
	if len(ms) != 1 || ms[0]["id"] != ipOther.id {
		t.Errorf("machines after remove: %v", ms)
	}
}

// TestMachinesInEffectOn2xx: a 2xx from the admin API means the change
// is in effect: a request forced to a machine right after its
// registration reaches it, and one right after its removal does not.
func TestMachinesInEffectOn2xx(t *testing.T) {
	e := startIPEdge(t)
	allocate(t, adminAddr, "other", "shared_v4")
	extra := testMachine{"0000000000f1b0", "iad", "127.0.57.12"}
	startMachines(t, e.machinePort, extra)
	url := "http://other." + e.domain + ":" + e.httpPort + "/"
	shared := via(e.roots, sharedV4)
	forced := func(id string) (int, *seen) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Fly-Force-Instance-Id", id)
		resp, err := shared.Do(req)
		if err != nil {
			t.Fatalf("GET forced to %s: %v", id, err)
		}
		defer resp.Body.Close()
		var s seen
		if json.NewDecoder(resp.Body).Decode(&s) != nil || s.Machine == "" {
			return resp.StatusCode, nil
		}
		return resp.StatusCode, &s
	}
	var unroutable, unremoved int
	for i := range 200 {
		id := fmt.Sprintf("0000000001%04x", i)
		body := `{"region":"iad","address":"` + extra.ip + `"}`
		if status, b := call(t, adminAddr, http.MethodPut, "/fly/apps/other/machines/"+id, body, nil); status != http.StatusCreated {
			t.Fatalf("registering %s: %d %s", id, status, b)
		}
		if status, s := forced(id); status != http.StatusOK || s == nil || s.Machine != extra.id {
			unroutable++
		}
		if status, b := call(t, adminAddr, http.MethodDelete, "/fly/apps/other/machines/"+id, "", nil); status != http.StatusNoContent {
			t.Fatalf("removing %s: %d %s", id, status, b)
		}
		if status, _ := forced(id); status != http.StatusNotFound {
			unremoved++
		}
	}
	if unroutable > 0 || unremoved > 0 {
		t.Errorf("of 200 machines, %d were not routable right after a 201, %d still routable right after a 204", unroutable, unremoved)
	}
}

// storageNode is a Caddy process of its own (not the shared one) with
// the apps app0..app99 and IP pools, on a storage folder that other
// nodes may share. It listens on nothing but its admin endpoint.
type storageNode struct {
	admin string
	proc  *exec.Cmd
	log   *logBuf
}

// storageLine is the Caddyfile storage option for storage: a folder, or
// a PostgreSQL DSN.
func storageLine(storage string) string {
	if strings.HasPrefix(storage, "postgres://") {
		return "storage postgres " + storage
	}
	return "storage file_system " + storage
}

func startStorageNode(t *testing.T, storage string) *storageNode {
	t.Helper()
	requireCaddy(t)
	n := &storageNode{admin: freeAddr(), log: new(logBuf)}
	var apps strings.Builder
	for i := range 100 {
		fmt.Fprintf(&apps, "\t\tapp app%d {\n\t\t\tservice 8080 {\n\t\t\t\tport 443 tls http\n\t\t\t}\n\t\t}\n", i)
	}
	cfg := fmt.Sprintf(`{
	admin %s
	persist_config off
	%s
	fly {
		base_domain edge.test
%s	}
	fly_ips {
		v6 fd00:fe::/64
		shared_v4 `+sharedV4+`
		v4 `+v4Pool+`
		auto_allocate off
	}
}
`, n.admin, storageLine(storage), apps.String())
	dir := t.TempDir()
	file := dir + "/Caddyfile"
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	n.proc = exec.Command(caddyBin, "run", "--config", file, "--adapter", "caddyfile")
	n.proc.Env = caddyEnv(dir)
	n.proc.Stdout, n.proc.Stderr = n.log, n.log
	n.proc.SysProcAttr = dieWithTests()
	if err := n.proc.Start(); err != nil {
		t.Fatal(err)
	}
	ownProcess(n.proc.Process.Pid)
	t.Cleanup(func() {
		if n.proc.ProcessState == nil {
			stopProcess(n.proc)
		}
	})
	if err := waitAdmin(n.admin, 60*time.Second); err != nil {
		t.Fatalf("%v\n%s", err, n.log)
	}
	return n
}

func (n *storageNode) ips(t *testing.T) []assignment {
	t.Helper()
	var out []assignment
	if status, body := call(t, n.admin, http.MethodGet, "/fly/ips", "", &out); status != http.StatusOK {
		t.Fatalf("GET /fly/ips: %d %s", status, body)
	}
	return out
}

// noDuplicates fails the test if a dedicated address is held twice.
func noDuplicates(t *testing.T, asgs []assignment) {
	t.Helper()
	seen := map[string]string{}
	for _, a := range asgs {
		if a.Type == "shared_v4" {
			continue
		}
		if other, dup := seen[a.Address]; dup {
			t.Errorf("%s handed out twice: to %s and %s", a.Address, other, a.App)
		}
		seen[a.Address] = a.App
	}
}

// TestSharedStorage: two Caddy processes sharing one storage folder, hit
// by 50 concurrent allocations each, never hand out an address twice,
// and each sees the other's assignments within 2 s.
func TestSharedStorage(t *testing.T) { testSharedStorage(t, t.TempDir()) }

// TestSharedStorageOnPostgres: the same, with the storage in PostgreSQL
// (caddy.storage.postgres).
func TestSharedStorageOnPostgres(t *testing.T) { testSharedStorage(t, testDatabase(t)) }

func testSharedStorage(t *testing.T, storage string) {
	nodes := []*storageNode{startStorageNode(t, storage), startStorageNode(t, storage)}
	var wg sync.WaitGroup
	var failed atomic.Int32
	start := make(chan struct{})
	for k, n := range nodes {
		for i := range 50 {
			wg.Go(func() {
				<-start
				typ := "v4"
				if i%5 == 4 {
					typ = "v6"
				}
				status, body := call(t, n.admin, http.MethodPost, fmt.Sprintf("/fly/apps/app%d/ips", k*50+i), `{"type":"`+typ+`"}`, nil)
				if status != http.StatusCreated {
					failed.Add(1)
					t.Errorf("node %d, app%d: %d %s", k, k*50+i, status, body)
				}
			})
		}
	}
	began := time.Now()
	close(start)
	wg.Wait()
	t.Logf("100 allocations on 2 nodes in %v", time.Since(began).Round(time.Millisecond))
	acked := time.Now()
	for {
		a, b := nodes[0].ips(t), nodes[1].ips(t)
		if len(a) == 100 && len(b) == 100 {
			t.Logf("both nodes saw all 100 assignments %v after the last answer", time.Since(acked).Round(time.Millisecond))
			noDuplicates(t, a)
			noDuplicates(t, b)
			break
		}
		if time.Since(acked) > 2*time.Second {
			t.Fatalf("2 s after the storm the nodes see %d and %d of 100 assignments", len(a), len(b))
		}
		time.Sleep(50 * time.Millisecond)
	}
	// a machine registered on one node serves on the other
	if status, body := call(t, nodes[0].admin, http.MethodPost, "/fly/apps/app7/machines", `{"id":"0000000000a007","region":"fra","address":"127.0.57.70"}`, nil); status != http.StatusCreated {
		t.Fatalf("machine add: %d %s", status, body)
	}
	added := time.Now()
	for {
		var ms []map[string]string
		call(t, nodes[1].admin, http.MethodGet, "/fly/apps/app7/machines", "", &ms)
		if len(ms) == 1 && ms[0]["id"] == "0000000000a007" && ms[0]["region"] == "fra" {
			break
		}
		if time.Since(added) > 2*time.Second {
			t.Fatalf("2 s after a machine was added on node 0, node 1 has %v", ms)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCrashDuringStorm: a Caddy killed with SIGKILL in the middle of an
// allocation storm restarts with every assignment it acknowledged, and
// its state loads and takes new allocations.
func TestCrashDuringStorm(t *testing.T) { testCrashDuringStorm(t, t.TempDir()) }

// TestCrashDuringStormOnPostgres: the same, with the storage in
// PostgreSQL; the killed process's lock is taken over after its lease.
func TestCrashDuringStormOnPostgres(t *testing.T) { testCrashDuringStorm(t, testDatabase(t)) }

func testCrashDuringStorm(t *testing.T, storage string) {
	n := startStorageNode(t, storage)
	type ack struct{ app, address string }
	acks := make(chan ack, 100000)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			app := fmt.Sprintf("app%d", i)
			for {
				req, _ := http.NewRequest(http.MethodPost, "http://"+n.admin+"/fly/apps/"+app+"/ips", strings.NewReader(`{"type":"v6"}`))
				resp, err := adminClient.Do(req)
				if err != nil {
					return // killed
				}
				var a assignment
				err = json.NewDecoder(resp.Body).Decode(&a)
				resp.Body.Close()
				if resp.StatusCode != http.StatusCreated || err != nil {
					return
				}
				acks <- ack{app, a.Address}
			}
		})
	}
	// kill it once some allocations are acknowledged and others are not
	var got []ack
	for len(got) < 300 {
		select {
		case a := <-acks:
			got = append(got, a)
		case <-time.After(20 * time.Second):
			t.Fatalf("only %d allocations acknowledged", len(got))
		}
	}
	n.proc.Process.Kill()
	n.proc.Wait()
	wg.Wait()
	close(acks)
	for a := range acks {
		got = append(got, a)
	}
	t.Logf("%d allocations acknowledged before SIGKILL", len(got))

	n2 := startStorageNode(t, storage)
	after := n2.ips(t)
	noDuplicates(t, after)
	held := map[string]string{}
	for _, a := range after {
		held[a.App+" "+a.Address] = a.Type
	}
	for _, a := range got {
		if held[a.app+" "+a.address] == "" {
			t.Errorf("acknowledged assignment %s -> %s is lost", a.address, a.app)
		}
	}
	// the state takes new changes (after the dead process's lock goes stale)
	if addr := allocate(t, n2.admin, "app99", "shared_v4"); addr != sharedV4 {
		t.Errorf("allocation after the restart gave %s", addr)
	}
	if addr := allocate(t, n2.admin, "app98", "v4"); addr == "" {
		t.Error("no v4 after the restart")
	}
	noDuplicates(t, n2.ips(t))
}

// TestAutoAllocation: an app with public services gets a dedicated IPv6
// address the first time it is configured, and a shared IPv4 address if
// it serves HTTP on 80 or TLS and HTTP on 443; releasing them sticks
// across reloads; with auto_allocate off nothing is allocated.
func TestAutoAllocation(t *testing.T) {
	requireCaddy(t)
	storage := t.TempDir()
	cfg := func(auto string) string {
		return fmt.Sprintf(`{
	admin %s
	persist_config off
	storage file_system %s
	fly {
		base_domain edge.test
		app site {
			service 8080 {
				port 80 http
				port 443 tls http
			}
		}
		app api {
			service 8080 {
				port 443 tls http
			}
		}
		app tcp {
			service 7000 {
				port 7000
			}
		}
		app private {
		}
		app later {
			service 8080 {
				port 80 http
			}
		}
	}
	fly_ips {
		v6 fd00:fe::/64
		shared_v4 %s
		auto_allocate %s
	}
}
`, adminAddr, storage, sharedV4, auto)
	}
	mustLoad(t, cfg("off"))
	if status, body := call(t, adminAddr, http.MethodGet, "/fly/ips", "", nil); status != 200 || body != "[]\n" {
		t.Fatalf("with auto_allocate off: %d %s", status, body)
	}
	mustLoad(t, cfg("on"))
	var got []assignment
	call(t, adminAddr, http.MethodGet, "/fly/ips", "", &got)
	types := map[string][]string{}
	for _, a := range got {
		types[a.App] = append(types[a.App], a.Type)
	}
	want := map[string][]string{"site": {"shared_v4", "v6"}, "api": {"shared_v4", "v6"}, "tcp": {"v6"}, "later": {"shared_v4", "v6"}}
	if fmt.Sprint(types) != fmt.Sprint(want) {
		t.Fatalf("automatic addresses %v, want %v", types, want)
	}
	// released addresses are not handed out again on the next load
	var v6 string
	for _, a := range got {
		if a.App == "tcp" {
			v6 = a.Address
		}
	}
	if status, _ := call(t, adminAddr, http.MethodDelete, "/fly/apps/tcp/ips/"+v6, "", nil); status != http.StatusNoContent {
		t.Fatal("release failed")
	}
	mustLoad(t, cfg("on"))
	var again []assignment
	if status, body := call(t, adminAddr, http.MethodGet, "/fly/apps/tcp/ips", "", &again); status != http.StatusOK {
		t.Fatalf("GET /fly/apps/tcp/ips: %d %s", status, body)
	}
	if len(again) != 0 {
		t.Errorf("a released automatic address came back on reload: %v", again)
	}
}

// TestBadPools: malformed or overlapping pools fail at load, naming the
// field.
func TestBadPools(t *testing.T) {
	requireCaddy(t)
	for _, tc := range []struct{ pools, want string }{
		{"v4 127.30.0.0/24 127.30.0.128/25", "v4[1] (127.30.0.129-127.30.0.254) overlaps v4[0] (127.30.0.1-127.30.0.254)"},
		{"shared_v4 127.30.0.9\n\t\tv4 127.30.0.0/24", "shared_v4[0] (127.30.0.9-127.30.0.9) overlaps v4[0]"},
		{"v6 fd00::/300", `v6[0]: "fd00::/300" is neither an address, a prefix nor a range first-last`},
		{"v6 127.0.0.0/8", `v6[0]: "127.0.0.0/8" is not IPv6`},
		{"auto_allocate maybe", `auto_allocate: "maybe" (want on or off)`},
	} {
		err := load(t, fmt.Sprintf("{\n\tadmin %s\n\tfly_ips {\n\t\t%s\n\t}\n}\n", adminAddr, tc.pools), "caddyfile")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pools %q: %v; want an error containing %q", tc.pools, err, tc.want)
		}
	}
}

// TestEgressIPs: a machine gets a static (v4, v6) pair through the CLI;
// it stays with the machine until released.
func TestEgressIPs(t *testing.T) {
	requireCaddy(t)
	storage := t.TempDir()
	cfg := fmt.Sprintf(`{
	admin %s
	persist_config off
	storage file_system %s
	fly {
		app worker {
			machine 0000000000e001 iad 127.0.0.1
			machine 0000000000e002 fra 127.0.0.1
		}
	}
	fly_ips {
		egress_v4 127.40.0.0/30
		egress_v6 fd00:e9::/64
	}
}
`, adminAddr, storage)
	mustLoad(t, cfg)
	cli := func(args ...string) (string, error) {
		out, err := exec.Command(caddyBin, append(append([]string{"fly", "machine", "egress-ip"}, args...), "-a", "worker", "--address", adminAddr)...).CombinedOutput()
		return string(out), err
	}
	out, err := cli("allocate", "0000000000e001")
	if err != nil || !strings.Contains(out, "Machine 0000000000e001 egress: 127.40.0.1, fd00:e9::1") {
		t.Fatalf("egress-ip allocate: %v\n%s", err, out)
	}
	out, err = cli("allocate", "0000000000e002")
	if err != nil || !strings.Contains(out, "127.40.0.2, fd00:e9::2") {
		t.Fatalf("egress-ip allocate: %v\n%s", err, out)
	}
	if out, err := cli("allocate", "0000000000e003"); err == nil || !strings.Contains(out, "app worker has no machine 0000000000e003 (HTTP 404)") {
		t.Errorf("unknown machine: %v\n%s", err, out)
	}
	if out, err := cli("allocate", "0000000000e001"); err == nil || !strings.Contains(out, "already has the egress pair") {
		t.Errorf("second pair: %v\n%s", err, out)
	}
	// the pair stays across a reload
	mustLoad(t, cfg)
	out, err = cli("list")
	if err != nil || !strings.Contains(out, "0000000000e001  127.40.0.1  fd00:e9::1") || !strings.Contains(out, "0000000000e002  127.40.0.2  fd00:e9::2") {
		t.Fatalf("egress-ip list: %v\n%s", err, out)
	}
	out, err = cli("release", "fd00:e9::1")
	if err != nil || !strings.Contains(out, "Released egress pair 127.40.0.1, fd00:e9::1 of machine 0000000000e001") {
		t.Fatalf("egress-ip release: %v\n%s", err, out)
	}
	// the /30 has two addresses; the released one is free again
	out, err = cli("allocate", "0000000000e001")
	if err != nil || !strings.Contains(out, "127.40.0.1") {
		t.Fatalf("allocate after release: %v\n%s", err, out)
	}
}

// TestPGTLSByAddress: pg_tls routes by the address too: a database app
// on its dedicated IPv4 (clients connecting by IP get its certificate),
// another on the shared IPv4 by TLS server name, and nothing else.
func TestPGTLSByAddress(t *testing.T) {
	requirePostgres(t)
	storage, port := t.TempDir(), freePort()
	edgeCount++
	domain := fmt.Sprintf("pgaddr-%d.test", edgeCount) // see startIPEdge
	cfg := fmt.Sprintf(`{
	"admin": {"listen": %q, "config": {"persist": false}},
	"storage": {"module": "file_system", "root": %q},
	"apps": {
		"fly": {"base_domain": %q, "apps": {
			"db": {"services": [{"internal_port": 5432, "ports": [{"port": %[4]s, "handlers": ["pg_tls"]}]}],
				"machines": [{"id": "0000000000d101", "region": "iad", "address": "127.0.0.1"}]},
			"db2": {"services": [{"internal_port": 5432, "ports": [{"port": %[4]s, "handlers": ["pg_tls"]}]}],
				"machines": [{"id": "0000000000d102", "region": "iad", "address": "127.0.0.1"}]}
		}},
		"fly_ips": {"shared_v4": [%q], "v4": [%q], "auto_allocate": false},
		"tls": {"automation": {
			"policies": [{"issuers": [{"module": "internal"}], "on_demand": true}],
			"on_demand": {"permission": {"module": "fly"}}
		}},
		"pki": {"certificate_authorities": {"local": {"install_trust": false}}},
		"layer4": {"servers": {"pg": {"listen": [":%[4]s"], "routes": [{"handle": [{"handler": "pg_tls"}, {"handler": "fly_proxy"}]}]}}}
	}
}`, adminAddr, storage, domain, port, sharedV4, v4Pool)
	if err := load(t, cfg, "json"); err != nil {
		t.Fatal(err)
	}
	dedicated := allocate(t, adminAddr, "db", "v4")
	allocate(t, adminAddr, "db2", "shared_v4")
	storageRoots(t, storage)
	root := storage + "/pki/authorities/local/root.crt"
	connect := func(host, ip, mode string) (string, error) {
		cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=postgres dbname=test sslrootcert=%s sslmode=%s connect_timeout=5", host, port, root, mode))
		if err != nil {
			return "", err
		}
		cfg.LookupFunc = func(context.Context, string) ([]string, error) { return []string{ip}, nil }
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return "", err
		}
		defer c.Close(ctx)
		var s string
		err = c.QueryRow(ctx, "select 'ok ' || current_database()").Scan(&s)
		return s, err
	}
	for _, tc := range []struct {
		name, host, ip, mode string
		ok                   bool
	}{
		{"db by name on its dedicated address", "db." + domain, dedicated, "verify-full", true},
		{"db by IP (no SNI) on its dedicated address", dedicated, dedicated, "require", true},
		{"db2 by name on the shared address", "db2." + domain, sharedV4, "verify-full", true},
		{"db on the shared address it does not hold", "db." + domain, sharedV4, "require", false},
		{"no name on the shared address", sharedV4, sharedV4, "require", false},
		{"an address of no app", "db." + domain, "127.0.0.1", "require", false},
	} {
		got, err := connect(tc.host, tc.ip, tc.mode)
		if tc.ok && (err != nil || got != "ok test") {
			t.Errorf("%s: %q, %v", tc.name, got, err)
		}
		if !tc.ok && err == nil {
			t.Errorf("%s: connected (%q), want refused", tc.name, got)
		}
	}
}
