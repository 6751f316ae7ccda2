package routing

import (
	"fmt"
	"testing"
)

// benchApp provisions an edge with n apps of three machines each
// (iad, lhr, syd).
func benchApp(b *testing.B, n int) *App {
	a := &App{Region: "iad", BaseDomain: "edge.test", Apps: make(map[string]*Application, n)}
	for i := range n {
		a.Apps[fmt.Sprintf("app%d", i)] = &Application{
			Services: []*Service{{InternalPort: 8080, Ports: []*Port{{Port: 443, Handlers: []string{"tls", "http"}}}}},
			Machines: []*Machine{
				{ID: fmt.Sprintf("%014x", 3*i), Region: "iad", Address: "10.0.0.1"},
				{ID: fmt.Sprintf("%014x", 3*i+1), Region: "lhr", Address: "10.0.0.2"},
				{ID: fmt.Sprintf("%014x", 3*i+2), Region: "syd", Address: "10.0.0.3"},
			},
		}
	}
	if err := provision(b, a); err != nil {
		b.Fatal(err)
	}
	return a
}

// BenchmarkSelect measures what one request costs in routing: finding
// the app and service by host and port, then choosing a machine, with 1
// and with 100,000 apps on the edge.
func BenchmarkSelect(b *testing.B) {
	for _, n := range []int{1, 100_000} {
		a := benchApp(b, n)
		host := fmt.Sprintf("app%d.edge.test", n/2)
		for _, bc := range []struct {
			name string
			pref Preference
		}{
			{"nearest", Preference{}},
			{"prefer-region", Preference{PreferRegions: "fra,eu"}},
			{"force-instance", Preference{ForceInstance: fmt.Sprintf("%014x", 3*(n/2)+2)}},
		} {
			b.Run(fmt.Sprintf("apps=%d/%s", n, bc.name), func(b *testing.B) {
				p := pool{}
				b.ReportAllocs()
				for b.Loop() {
					rt, err := routeFor(a, host, 443)
					if err != nil {
						b.Fatal(err)
					}
					if i, _ := Select(rt, p, bc.pref); i < 0 {
						b.Fatal("no machine")
					}
				}
			})
		}
	}
}
