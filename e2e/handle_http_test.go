package e2e

import (
	"crypto/x509"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// machines of the test app "web" and "secure"; every one listens on its
// own loopback address and the same internal port.
var webMachines = []testMachine{
	{"00000000000a01", "iad", "127.0.51.1"},
	{"00000000000a02", "iad", "127.0.51.2"},
	{"00000000000b01", "ord", "127.0.51.3"},
	{"00000000000c01", "lhr", "127.0.51.4"},
	{"00000000000d01", "syd", "127.0.51.5"},
}

var secureMachine = testMachine{"00000000000e01", "iad", "127.0.52.1"}

// edge is one loaded test config: its ports and clients.
type edge struct {
	httpPort, httpsPort, machinePort string
	roots                            *x509.CertPool
	h1, h2                           *http.Client
	machines                         map[string]*http.Server
}

// edgeConfig is the test edge: region iad, apps web (5 machines, http and
// tls+http ports) and secure (force_https), the standard flyedge route.
// %[1]s http port, %[2]s https port, %[3]s machine port, %[4]s machines
// of web, %[5]s extra service lines of web, %[6]s extra reverse_proxy
// lines.
const edgeConfig = `{
	admin %[7]s
	persist_config off
	local_certs
	skip_install_trust
	auto_https disable_redirects
	fly {
		region iad
		base_domain edge.test
		app web {
			hostnames www.example.com
			service %[3]s {
				port %[1]s http
				port %[2]s tls http
				%[5]s
			}
			%[4]s
		}
		app secure {
			service %[3]s {
				port %[1]s http {
					force_https
				}
				port %[2]s tls http
			}
			machine %[8]s iad 127.0.52.1
		}
	}
}
http://:%[1]s, https://:%[2]s {
	tls internal {
		on_demand
	}
	force_https
	fly_headers
	reverse_proxy {
		dynamic fly
		lb_policy fly
		transport fly
		%[6]s
	}
}
`

// startEdge starts the machines and loads the edge config with the given
// extra service and reverse_proxy lines.
func startEdge(t *testing.T, serviceExtra, proxyExtra string) *edge {
	t.Helper()
	requireCaddy(t)
	e := &edge{httpPort: freePort(), httpsPort: freePort(), machinePort: freePort()}
	e.machines = startMachines(t, e.machinePort, append(webMachines, secureMachine)...)
	var ms []string
	for _, m := range webMachines {
		ms = append(ms, fmt.Sprintf("machine %s %s %s", m.id, m.region, m.ip))
	}
	mustLoad(t, fmt.Sprintf(edgeConfig, e.httpPort, e.httpsPort, e.machinePort,
		strings.Join(ms, "\n\t\t\t"), serviceExtra, proxyExtra, adminAddr, secureMachine.id))
	e.roots = caddyRoots(t, caddyHome)
	e.h1, e.h2 = newClient(e.roots, false), newClient(e.roots, true)
	return e
}

func TestFlyHeaders(t *testing.T) {
	e := startEdge(t, "", "")
	for _, tc := range []struct {
		name, scheme, port, proto, ssl string
		client                         *http.Client
		clientProto                    string
	}{
		{"http/1.1", "http", e.httpPort, "http", "off", e.h1, "HTTP/1.1"},
		{"https http/1.1", "https", e.httpsPort, "https", "on", e.h1, "HTTP/1.1"},
		{"https h2", "https", e.httpsPort, "https", "on", e.h2, "HTTP/2.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.scheme + "://web.edge.test:" + tc.port + "/path?q=1"
			resp, body, s := get(t, tc.client, url, nil)
			if s == nil {
				t.Fatalf("status %d, body %q: the request did not reach a machine", resp.StatusCode, body)
			}
			if resp.Proto != tc.clientProto {
				t.Errorf("client spoke %s, want %s", resp.Proto, tc.clientProto)
			}
			if s.Proto != "HTTP/1.1" {
				t.Errorf("the app received %s, want HTTP/1.1", s.Proto)
			}
			want := map[string]string{
				"Fly-Client-Ip":      "127.0.0.1",
				"X-Forwarded-For":    "127.0.0.1",
				"X-Forwarded-Proto":  tc.proto,
				"X-Forwarded-Ssl":    tc.ssl,
				"X-Forwarded-Port":   tc.port,
				"Fly-Forwarded-Port": tc.port,
				"Fly-Region":         "iad",
			}
			for k, v := range want {
				if got := strings.Join(s.Header[k], ","); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			if s.Host != "web.edge.test:"+tc.port || s.URI != "/path?q=1" {
				t.Errorf("the app got host %q uri %q", s.Host, s.URI)
			}
		})
	}

	t.Run("spoofed client values", func(t *testing.T) {
		for _, tc := range []struct {
			name, url, proto, ssl, port string
			client                      *http.Client
		}{
			{"http", "http://web.edge.test:" + e.httpPort + "/", "http", "off", e.httpPort, e.h1},
			{"h2", "https://web.edge.test:" + e.httpsPort + "/", "https", "on", e.httpsPort, e.h2},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp, body, s := get(t, tc.client, tc.url, map[string]string{
					"Fly-Client-IP":                      "6.6.6.6",
					"X-Forwarded-For":                    "6.6.6.6",
					"X-Forwarded-Proto":                  map[string]string{"http": "https", "https": "http"}[tc.proto],
					"X-Forwarded-SSL":                    map[string]string{"off": "on", "on": "off"}[tc.ssl],
					"X-Forwarded-Host":                   "evil.example",
					"X-Forwarded-Port":                   "4443",
					"Fly-Forwarded-Port":                 "1",
					"Fly-Region":                         "lhr",
					"Fly-Preferred-Instance-Unavailable": "00000000000a01",
					"Fly-Request-Id":                     "forged",
				})
				if s == nil {
					t.Fatalf("no machine answered: %s", body)
				}
				want := map[string]string{
					"Fly-Client-Ip":                      "127.0.0.1",
					"X-Forwarded-For":                    "127.0.0.1",
					"X-Forwarded-Proto":                  tc.proto,
					"X-Forwarded-Ssl":                    tc.ssl,
					"X-Forwarded-Port":                   "4443", // the client may set it
					"Fly-Forwarded-Port":                 tc.port,
					"Fly-Region":                         "iad",
					"Fly-Preferred-Instance-Unavailable": "",
				}
				for k, v := range want {
					if got := strings.Join(s.Header[k], ","); got != v {
						t.Errorf("%s: %q, want %q", k, got, v)
					}
				}
				// the edge's own request ID, echoed on the response; the
				// edge named in Via both ways
				id := s.Header.Get("Fly-Request-Id")
				if len(id) != 30 || !strings.HasSuffix(id, "-iad") || resp.Header.Get("Fly-Request-Id") != id {
					t.Errorf("Fly-Request-Id %q to the app, %q to the client; want one new ID ending in -iad", id, resp.Header.Get("Fly-Request-Id"))
				}
				// the client's protocol both ways, as Fly's proxy writes it
				wantVia := map[bool]string{false: "1.1 flyedge", true: "2 flyedge"}[resp.ProtoMajor == 2]
				if via := s.Header.Get("Via"); via != wantVia {
					t.Errorf("Via to the app: %q, want %q", via, wantVia)
				}
				if via := resp.Header.Get("Via"); via != wantVia {
					t.Errorf("Via to the client over %s: %q, want %q", resp.Proto, via, wantVia)
				}
				if got := s.Header.Get("X-Forwarded-Host"); got == "evil.example" {
					t.Errorf("X-Forwarded-Host from an untrusted client reached the app")
				}
			})
		}
	})

	t.Run("unknown host is denied", func(t *testing.T) {
		for _, url := range []string{
			"http://nobody.edge.test:" + e.httpPort + "/",
			"https://nobody.edge.test:" + e.httpsPort + "/",
		} {
			resp, body, s := get(t, e.h2, url, nil)
			if s != nil || resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "no app answers") {
				t.Errorf("%s: status %d body %q machine %v; want 404 from the edge", url, resp.StatusCode, body, s)
			}
		}
	})

	t.Run("custom hostname", func(t *testing.T) {
		if _, body, s := get(t, e.h1, "http://www.example.com:"+e.httpPort+"/", nil); s == nil {
			t.Errorf("www.example.com did not reach app web: %s", body)
		}
	})

	// without IP pools, a name added through the certs API routes (and
	// gets its certificate) as a name of the config does
	t.Run("certs API hostname", func(t *testing.T) {
		status, body := call(t, adminAddr, http.MethodPost, "/fly/apps/web/certs", `{"hostname":"shop.example.net"}`, nil)
		if status != http.StatusCreated && status != http.StatusOK {
			t.Fatalf("certs add: %d %s", status, body)
		}
		for _, url := range []string{"http://shop.example.net:" + e.httpPort + "/", "https://shop.example.net:" + e.httpsPort + "/"} {
			if resp, body, s := get(t, e.h1, url, nil); s == nil || s.Machine == secureMachine.id || s.Host != "shop.example.net:"+portOf(url) {
				t.Errorf("%s: status %d %q; want web's machine", url, resp.StatusCode, body)
			}
		}
	})
}

func TestForceHTTPS(t *testing.T) {
	e := startEdge(t, "", "")
	for _, tc := range []struct {
		name, url, location string
		client              *http.Client
	}{
		{"path and query kept", "http://secure.edge.test:" + e.httpPort + "/a/b%20c?x=1&y=%2F", "https://secure.edge.test:" + e.httpsPort + "/a/b%20c?x=1&y=%2F", e.h1},
		{"root", "http://secure.edge.test:" + e.httpPort, "https://secure.edge.test:" + e.httpsPort + "/", e.h1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, _, s := get(t, tc.client, tc.url, nil)
			if s != nil || resp.StatusCode != http.StatusMovedPermanently {
				t.Fatalf("status %d, machine %v; want 301 from the edge", resp.StatusCode, s)
			}
			if got := resp.Header.Get("Location"); got != tc.location {
				t.Fatalf("Location %q, want %q", got, tc.location)
			}
			// the redirect leads to the app
			if _, body, s := get(t, tc.client, tc.location, nil); s == nil || s.Machine != secureMachine.id {
				t.Fatalf("following the redirect: %s", body)
			}
		})
	}
	t.Run("https is not redirected", func(t *testing.T) {
		for _, c := range []*http.Client{e.h1, e.h2} {
			if resp, body, s := get(t, c, "https://secure.edge.test:"+e.httpsPort+"/", nil); s == nil {
				t.Fatalf("status %d %s", resp.StatusCode, body)
			}
		}
	})
	t.Run("apps without force_https are not redirected", func(t *testing.T) {
		if resp, body, s := get(t, e.h1, "http://web.edge.test:"+e.httpPort+"/", nil); s == nil {
			t.Fatalf("status %d %s", resp.StatusCode, body)
		}
	})
}

func TestH2CBackend(t *testing.T) {
	e := startEdge(t, "h2_backend", "")
	for _, tc := range []struct {
		name, url string
		client    *http.Client
	}{
		{"http/1.1 client", "http://web.edge.test:" + e.httpPort + "/", e.h1},
		{"https http/1.1 client", "https://web.edge.test:" + e.httpsPort + "/", e.h1},
		{"h2 client", "https://web.edge.test:" + e.httpsPort + "/", e.h2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, body, s := get(t, tc.client, tc.url, nil)
			if s == nil || s.Proto != "HTTP/2.0" {
				t.Fatalf("an app with h2_backend should receive h2c, got %s", body)
			}
			if s.Header.Get("Fly-Region") != "iad" {
				t.Fatalf("headers missing over h2c: %v", s.Header)
			}
		})
	}
	// the other app of the same route still gets HTTP/1.1
	if _, body, s := get(t, e.h2, "https://secure.edge.test:"+e.httpsPort+"/", nil); s == nil || s.Proto != "HTTP/1.1" {
		t.Fatalf("app without h2_backend: %s", body)
	}
}
