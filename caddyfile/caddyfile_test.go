package caddyfile_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	_ "github.com/flyedge/caddy-flyedge"
)

// TestAdapt checks testdata/*.caddyfiletest: a Caddyfile, a line of
// dashes, and the JSON it must adapt to.
func TestAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no test files: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			in, want, ok := strings.Cut(string(data), "----------")
			if !ok {
				t.Fatal("no ---------- separator")
			}
			if !caddytest.CompareAdapt(t, f, strings.TrimSpace(in)+"\n", "caddyfile", strings.TrimSpace(want)) {
				t.Fail()
			}
		})
	}
}

// TestAdaptErrors checks that wrong Caddyfile input fails with a message
// that names the option and the line.
func TestAdaptErrors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"unknown fly option", "{\n fly {\n colour blue\n }\n}", "unrecognized fly option 'colour', at Caddyfile:3"},
		{"region twice", "{\n fly {\n region iad\n region lhr\n }\n}", "region already specified, at Caddyfile:4"},
		{"region without value", "{\n fly {\n region\n }\n}", "wrong argument count"},
		{"region across blocks", "{\n fly {\n region iad\n }\n fly {\n region lhr\n }\n}", "region already specified"},
		{"app twice", "{\n fly {\n app a\n app a\n }\n}", "app a already specified"},
		{"machine args", "{\n fly {\n app a {\n machine 00000000000001 iad\n }\n }\n}", "wrong argument count"},
		{"unknown machine option", "{\n fly {\n app a {\n machine 00000000000001 iad 10.0.0.1 {\n group web\n }\n }\n }\n}", "unrecognized machine option 'group'"},
		{"process_group twice", "{\n fly {\n app a {\n machine 00000000000001 iad 10.0.0.1 {\n process_group web\n process_group worker\n }\n }\n }\n}", "process_group already specified"},
		{"processes without groups", "{\n fly {\n app a {\n service 80 {\n processes\n }\n }\n }\n}", "wrong argument count"},
		{"unknown app option", "{\n fly {\n app a {\n replicas 3\n }\n }\n}", "unrecognized fly app option 'replicas'"},
		{"service port not a number", "{\n fly {\n app a {\n service http {\n }\n }\n }\n}", `service: internal port "http": not a number`},
		{"unknown port option", "{\n fly {\n app a {\n service 80 {\n port 80 http {\n hsts\n }\n }\n }\n }\n}", "unrecognized fly port option 'hsts'"},
		{"force_https twice", "{\n fly {\n app a {\n service 80 {\n port 80 http {\n force_https\n force_https\n }\n }\n }\n }\n}", "force_https already specified"},
		{"concurrency args", "{\n fly {\n app a {\n service 80 {\n concurrency requests 20\n }\n }\n }\n}", "wrong argument count"},
		{"check option", "{\n fly {\n app a {\n service 80 {\n check tcp {\n retries 3\n }\n }\n }\n }\n}", "unrecognized check option 'retries'"},
		{"check header args", "{\n fly {\n app a {\n service 80 {\n check http {\n header Host\n }\n }\n }\n }\n}", "wrong argument count"},
		{"check header twice", "{\n fly {\n app a {\n service 80 {\n check http {\n header Host a\n header Host b\n }\n }\n }\n }\n}", "header Host already specified"},
		{"check protocol twice", "{\n fly {\n app a {\n service 80 {\n check http {\n protocol https\n protocol http\n }\n }\n }\n }\n}", "protocol already specified"},
		{"check tls_skip_verify argument", "{\n fly {\n app a {\n service 80 {\n check http {\n tls_skip_verify yes\n }\n }\n }\n }\n}", "wrong argument count"},
		{"check duration", "{\n fly {\n app a {\n service 80 {\n check tcp {\n interval soon\n }\n }\n }\n }\n}", `interval "soon"`},
		{"failover option", "{\n fly {\n failover {\n retries 3\n }\n }\n}", "unrecognized failover option 'retries'"},
		{"failover attempts", "{\n fly {\n failover {\n attempts 0\n }\n }\n}", `attempts "0": want a positive number`},
		{"failover fail_duration", "{\n fly {\n failover {\n fail_duration soon\n }\n }\n}", `fail_duration "soon": want a positive duration`},
		{"failover twice", "{\n fly {\n failover {\n attempts 2\n }\n failover {\n attempts 3\n }\n }\n}", "failover already specified"},
		{"failover attempts twice", "{\n fly {\n failover {\n attempts 2\n attempts 3\n }\n }\n}", "attempts already specified"},
		{"add_region latitude", "{\n fly {\n add_region zrh ch eu north 8.5\n }\n}", `add_region zrh: latitude "north"`},
		{"force_https args", ":80 {\n force_https always\n}", "wrong argument count"},
		{"unknown fly_ips option", "{\n fly_ips {\n v5 10.0.0.0/8\n }\n}", "unrecognized fly_ips option 'v5', at Caddyfile:3"},
		{"fly_ips pool without values", "{\n fly_ips {\n v4\n }\n}", "wrong argument count"},
		{"fly_ips auto_allocate", "{\n fly_ips {\n auto_allocate sometimes\n }\n}", `auto_allocate: "sometimes" (want on or off)`},
		{"fly_ips http_port twice", "{\n fly_ips {\n http_port 8080\n http_port 8081\n }\n}", "http_port already specified"},
		{"fly_ips share_ports twice", "{\n fly_ips {\n ports 80\n share_ports\n share_ports\n }\n}", "share_ports already specified"},
		{"fly_ips share_ports argument", "{\n fly_ips {\n ports 80\n share_ports yes\n }\n}", "wrong argument count"},
		{"fly_ips http_port", "{\n fly_ips {\n http_port eighty\n }\n}", `http_port: "eighty" is not a port number`},
		{"unknown fly_edge option", "{\n fly_edge {\n ports 80\n v4 10.0.0.0/8\n }\n}", "unrecognized fly_edge option 'v4', at Caddyfile:4"},
		{"fly_edge ports without values", "{\n fly_edge {\n ports\n }\n}", "wrong argument count"},
		{"fly_edge share_ports twice", "{\n fly_edge {\n ports 80\n share_ports\n share_ports\n }\n}", "share_ports already specified"},
		{"fly_edge share_ports across blocks", "{\n fly_edge {\n share_ports\n }\n fly_edge {\n share_ports\n }\n}", "share_ports already specified"},
		{"fly_edge udp_idle_timeout", "{\n fly_edge {\n udp_ports 53\n udp_idle_timeout soon\n }\n}", `udp_idle_timeout "soon"`},
		{"fly_edge handshake_timeout twice", "{\n fly_edge {\n ports 80\n handshake_timeout 5s\n handshake_timeout 6s\n }\n}", "handshake_timeout already specified"},
		{"fly_edge matching_timeout", "{\n fly_edge {\n ports 80\n matching_timeout soon\n }\n}", `matching_timeout "soon"`},
		{"fly_edge http_listener twice", "{\n fly_edge {\n http_listener a\n http_listener b\n }\n}", "http_listener already specified"},
		{"fly_edge argument", "{\n fly_edge web {\n ports 80\n }\n}", "wrong argument count"},
		{"fly_app http block", ":80 {\n @a fly_app {\n handlers tls\n }\n respond @a 200\n}", "fly_app takes no block"},
		{"fly_app layer4 option", "{\n layer4 {\n :5000 {\n @a fly_app {\n ports 443\n }\n route @a {\n fly_proxy\n }\n }\n }\n}", "unrecognized fly_app option 'ports'"},
		{"permission fly options", "{\n on_demand_tls {\n permission fly strict\n }\n}", "permission fly takes no options"},
		{"fly_headers block", ":80 {\n fly_headers {\n region lhr\n }\n}", "unrecognized fly_headers option 'region'"},
		{"lb_policy fly option", ":80 {\n reverse_proxy {\n dynamic fly\n lb_policy fly {\n sticky\n }\n }\n}", "unrecognized fly policy option 'sticky'"},
		{"fly_proxy option", "{\n layer4 {\n :5000 {\n route {\n fly_proxy {\n retries 3\n }\n }\n }\n }\n}", "unrecognized fly_proxy option 'retries'"},
		{"fly_proxy max_attempts", "{\n layer4 {\n :5000 {\n route {\n fly_proxy {\n max_attempts 0\n }\n }\n }\n }\n}", `max_attempts "0": want a positive number`},
		{"proxy_proto version", "{\n layer4 {\n :5000 {\n route {\n proxy_proto v3\n fly_proxy\n }\n }\n }\n}", `proxy_proto: "v3": want v1 or v2`},
		{"fly_tls option", "{\n layer4 {\n :5000 {\n route {\n fly_tls {\n alpn h2\n }\n }\n }\n }\n}", "unrecognized fly_tls option 'alpn'"},
		{"pg_tls option", "{\n layer4 {\n :5433 {\n route {\n pg_tls {\n require_ssl\n }\n }\n }\n }\n}", "unrecognized pg_tls option 'require_ssl'"},
		{"pg_tls twice", "{\n layer4 {\n :5433 {\n route {\n pg_tls {\n allow_plaintext\n allow_plaintext\n }\n }\n }\n }\n}", "allow_plaintext already specified"},
		{"pg_tls cancel_timeout twice", "{\n layer4 {\n :5433 {\n route {\n pg_tls {\n cancel_timeout 1s\n cancel_timeout 2s\n }\n }\n }\n }\n}", "cancel_timeout already specified"},
		{"pg_tls cancel_timeout", "{\n layer4 {\n :5433 {\n route {\n pg_tls {\n cancel_timeout soon\n }\n }\n }\n }\n}", `cancel_timeout "soon"`},
		{"fly_proxy idle_timeout twice", "{\n layer4 {\n :5000 {\n route {\n fly_proxy {\n idle_timeout 1m\n idle_timeout 2m\n }\n }\n }\n }\n}", "idle_timeout already specified"},
		{"pg_tls upstream_tls", "{\n layer4 {\n :5433 {\n route {\n pg_tls {\n upstream_tls verify\n }\n }\n }\n }\n}", "unrecognized upstream_tls option 'verify'"},
		{"response header twice", "{\n fly {\n app a {\n service 80 {\n response {\n header X-A b\n header X-A c\n }\n }\n }\n }\n}", "header X-A already specified"},
		{"response header remove with value", "{\n fly {\n app a {\n service 80 {\n response {\n header -X-A b\n }\n }\n }\n }\n}", "want a name and values, or -<name> alone"},
		{"response option", "{\n fly {\n app a {\n service 80 {\n response {\n gzip\n }\n }\n }\n }\n}", "unrecognized response option 'gzip'"},
		{"dynamic fly args", ":80 {\n reverse_proxy {\n dynamic fly web\n }\n}", "wrong argument count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(tc.in), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
