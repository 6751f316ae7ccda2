package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

const metricsConfig = `{
	admin %[1]s
	persist_config off
	auto_https off
	fly {
		region iad
		base_domain metrics.test
		app web {
			service %[3]s {
				port %[2]s http
			}
			machine 00000000000a01 iad 127.0.51.1
		}
		app tcp {
			service %[5]s {
				port %[4]s
			}
			machine 00000000000f01 iad 127.0.53.1
		}
	}
	layer4 {
		:%[4]s {
			route {
				fly_proxy
			}
		}
	}
}
http://:%[2]s {
	fly_headers
	reverse_proxy {
		dynamic fly
		lb_policy fly
		transport fly
	}
}
`

// scrape reads the shared Caddy's metrics endpoint with the Prometheus
// text parser.
func scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := adminClient.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the metrics: %v", err)
	}
	return families
}

// value returns the value of the series of family name whose labels
// include want, summed over the others, and whether one exists.
func value(families map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f := families[name]
	if f == nil {
		return 0, false
	}
	sum, found := 0.0, false
series:
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue series
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum, found
}

// TestMetrics: per-app series on Caddy's metrics endpoint, labeled by app
// and service only.
func TestMetrics(t *testing.T) {
	requireCaddy(t)
	httpPort, tcpPort, machinePort, tcpMachinePort := freePort(), freePort(), freePort(), freePort()
	startMachines(t, machinePort, webMachines[0])
	startSinks(t, tcpMachinePort, 0, l4Machines[0])
	mustLoad(t, fmt.Sprintf(metricsConfig, adminAddr, httpPort, machinePort, tcpPort, tcpMachinePort))
	c := &http.Client{Transport: &http.Transport{Dial: func(network, _ string) (net.Conn, error) {
		return net.Dial(network, "127.0.0.1:"+httpPort)
	}}}
	for i := range 5 {
		resp, err := c.Post("http://web.metrics.test:"+httpPort+"/", "text/plain", strings.NewReader("hello"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	req, _ := http.NewRequest("GET", "http://web.metrics.test:"+httpPort+"/", nil)
	req.Header.Set("Fly-Force-Instance-Id", "0123456789abcd")
	if resp, err := c.Do(req); err != nil || resp.StatusCode != 404 {
		t.Fatalf("forced to an unknown machine: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	// a layer 4 connection, held open while the metrics are read (the
	// sink answers at EOF)
	tc, err := net.Dial("tcp", "127.0.0.1:"+tcpPort)
	if err != nil {
		t.Fatal(err)
	}
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(tc, "ping")
	waitFor(t, "the layer 4 connection in the gauge", func() bool {
		v, _ := value(scrape(t), "caddy_fly_l4_open_connections", map[string]string{"app": "tcp"})
		return v == 1
	})

	web := map[string]string{"app": "web", "service": machinePort}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range web {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	families := scrape(t)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   func(float64) bool
	}{
		{"caddy_fly_http_requests_total", with(map[string]string{"status_class": "2xx"}), func(v float64) bool { return v == 5 }},
		{"caddy_fly_http_requests_total", with(map[string]string{"status_class": "4xx"}), func(v float64) bool { return v == 1 }},
		{"caddy_fly_http_request_duration_seconds", web, func(v float64) bool { return v == 6 }},
		{"caddy_fly_bytes_total", with(map[string]string{"direction": "in"}), func(v float64) bool { return v == 25 }},
		{"caddy_fly_bytes_total", with(map[string]string{"direction": "out"}), func(v float64) bool { return v > 0 }},
		{"caddy_fly_routing_machine_selections_total", with(map[string]string{"outcome": "chosen"}), func(v float64) bool { return v == 5 }},
		{"caddy_fly_routing_machine_selections_total", with(map[string]string{"outcome": "forced_failed"}), func(v float64) bool { return v == 1 }},
		{"caddy_fly_l4_open_connections", map[string]string{"app": "tcp", "service": tcpMachinePort, "handlers": "none"}, func(v float64) bool { return v == 1 }},
		{"caddy_fly_routing_machine_selections_total", map[string]string{"app": "tcp", "outcome": "chosen"}, func(v float64) bool { return v == 1 }},
	} {
		if v, ok := value(families, tc.name, tc.labels); !ok || !tc.want(v) {
			t.Errorf("%s%v = %v (present %t)", tc.name, tc.labels, v, ok)
		}
	}
	// bounded cardinality: no host names, machine IDs or addresses
	for name, f := range families {
		if !strings.HasPrefix(name, "caddy_fly_") {
			continue
		}
		for _, m := range f.Metric {
			for _, l := range m.Label {
				if v := l.GetValue(); strings.Contains(v, ".") || strings.Contains(v, "0000000000") {
					t.Errorf("%s has label %s=%q", name, l.GetName(), v)
				}
			}
		}
	}
	tc.Close()
	waitFor(t, "the layer 4 connection to leave the gauge", func() bool {
		v, _ := value(scrape(t), "caddy_fly_l4_open_connections", map[string]string{"app": "tcp"})
		return v == 0
	})
}
