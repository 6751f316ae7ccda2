package routing

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// TestHealthCheckHostHeader: a check with a Host header (and an auth
// header) keeps a machine in selection only when the machine sees that
// Host: the same machine behind a check for another Host drops out.
func TestHealthCheckHostHeader(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "app.example.com" || r.Header.Get("Authorization") != "Bearer s3cret" {
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer srv.Close()
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	for _, tc := range []struct {
		host    string
		healthy bool
	}{
		{"app.example.com", true},
		{"other.example.com", false},
	} {
		t.Run(tc.host, func(t *testing.T) {
			a := &App{
				Region: "iad",
				Apps: map[string]*Application{"web": {
					Services: []*Service{{
						InternalPort: atoi(t, port),
						Ports:        []*Port{{Port: 443, Handlers: []string{"tls", "http"}}},
						Checks: []*Check{{
							Type: "http", Path: "/healthz", Interval: caddy.Duration(MinCheckInterval),
							Timeout: caddy.Duration(time.Second), GracePeriod: 1,
							Headers: map[string]string{"Host": tc.host, "Authorization": "Bearer s3cret"},
						}},
					}},
					Machines: []*Machine{{ID: "000000000000b1", Region: "iad", Address: host}},
				}},
			}
			if err := provision(t, a); err != nil {
				t.Fatal(err)
			}
			if err := a.Start(); err != nil {
				t.Fatal(err)
			}
			defer a.Stop()
			rt, _ := routeFor(a, "web.localhost", 443)
			m := rt.machines[rt.MachineIndex("000000000000b1")]
			deadline := time.Now().Add(1500 * time.Millisecond) // the first probe runs after 1 ns, then every second
			for time.Now().Before(deadline) {
				if !m.available() {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			if m.available() != tc.healthy {
				t.Fatalf("Host %s: available %v, want %v", tc.host, m.available(), tc.healthy)
			}
		})
	}
}

// TestHealthCheckHTTPS: an https check against a machine with a
// self-signed certificate passes with tls_skip_verify and fails without
// it (or with a tls_server_name the certificate is not signed for by a
// known root); a plain http check against it fails.
func TestHealthCheckHTTPS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || r.Host != "app.example.com" {
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	defer srv.Close()
	dial := srv.Listener.Addr().String()
	host := map[string]string{"Host": "app.example.com"}
	for _, tc := range []struct {
		name string
		c    Check
		want string // "" when it passes
	}{
		{"tls_skip_verify", Check{Type: "http", Protocol: "https", TLSSkipVerify: true, Headers: host}, ""},
		{"verify", Check{Type: "http", Protocol: "https", Headers: host}, "certificate"},
		{"tls_server_name", Check{Type: "http", Protocol: "https", TLSServerName: "example.com", Headers: host}, "certificate"},
		{"plain http", Check{Type: "http", Headers: host}, "status 400"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &tc.c
			if key, err := c.Request(); err != nil {
				t.Fatal(key, err)
			}
			err := check(context.Background(), probeClient(c, time.Second), dial, c, time.Second)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("failed: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestCheckHTTPOptionsInput: headers, protocol and the TLS options are
// refused where they would do nothing or harm, naming the field.
func TestCheckHTTPOptionsInput(t *testing.T) {
	many := make(map[string]string)
	for i := range MaxCheckHeaders + 1 {
		many[fmt.Sprintf("X-H%d", i)] = "v"
	}
	for _, tc := range []struct {
		check string
		want  string
	}{
		{`{"type":"http","headers":{"Host":"a.example.com","Authorization":"Bearer x"},"protocol":"https","tls_skip_verify":true,"tls_server_name":"a.example.com"}`, ""},
		{`{"type":"http","headers":{"X-A":"a\r\nX-B: b"}}`, "checks[0].headers.X-A: a value with a line break or NUL"},
		{`{"type":"http","headers":{"X A":"a"}}`, `checks[0].headers: "X A" is not a header name`},
		{`{"type":"http","headers":{"X-A":"` + strings.Repeat("a", MaxCheckHeaderBytes) + `"}}`, "checks[0].headers: more than 4096 bytes"},
		{`{"type":"http","protocol":"ftp"}`, `checks[0].protocol: "ftp" (want http or https)`},
		{`{"type":"http","tls_skip_verify":true}`, "checks[0].tls_skip_verify: only https checks"},
		{`{"type":"http","protocol":"http","tls_server_name":"a.example.com"}`, "checks[0].tls_server_name: only https checks"},
		{`{"type":"http","protocol":"https","tls_server_name":"A_B"}`, `checks[0].tls_server_name: "A_B" is not a lower-case host name`},
		{`{"type":"tcp","headers":{"Host":"a"}}`, "checks[0].headers: only http checks"},
		{`{"type":"tcp","protocol":"https"}`, "checks[0].protocol"},
	} {
		js := `{"services":[{"internal_port":8080,"ports":[{"port":443,"handlers":["tls","http"]}],"checks":[` + tc.check + `]}]}`
		_, err := ParseApp("web", []byte(js))
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: refused: %v", tc.check, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want %q", tc.check, err, tc.want)
		}
	}
	c := &Check{Type: "http", Headers: many}
	if _, err := c.Request(); err == nil || !strings.Contains(err.Error(), "17 headers; at most 16") {
		t.Errorf("17 headers: got %v", err)
	}
}
