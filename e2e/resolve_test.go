package e2e

// Step 2, resolve: the app a connection is for, by the address it came
// to and the host name it names, and default deny for everything else.
// ipEdge, the edge these tests (and others) route through, is here.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
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
	var answered atomic.Int64 // requests the client has had an answer to
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
			answered.Add(1)
		}
	}()
	// between the steps, the client sends requests through the state
	// each step leaves
	requests := func(n int64) {
		t.Helper()
		want := answered.Load() + n
		waitFor(t, fmt.Sprintf("%d more requests of the client", n), func() bool { return answered.Load() >= want })
	}
	requests(5)

	// 1. allocate a shared address
	shared := allocate(t, adminAddr, "web", "shared_v4")
	// 3. check the app works through it, like curl --resolve
	if got, err := machineOf(via(e.roots, shared), url); err != nil || got != ipWeb.id {
		t.Fatalf("checking the shared address: machine %q, %v", got, err)
	}
	requests(5)
	// 2./5. the DNS record moves to the shared address; caches clear
	dns.Store(shared)
	tr.CloseIdleConnections()
	requests(5)
	// 6. release the dedicated address
	if status, body := call(t, adminAddr, http.MethodDelete, "/fly/apps/web/ips/"+dedicated, "", nil); status != http.StatusNoContent {
		t.Fatalf("release: %d %s", status, body)
	}
	requests(5)
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
