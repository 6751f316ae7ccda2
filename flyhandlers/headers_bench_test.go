package flyhandlers

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"go.uber.org/zap"
)

// okNext answers 200 with a short body, as a machine through
// reverse_proxy would, leaving the Via entry Caddy's proxy adds.
type okNext struct{}

func (okNext) ServeHTTP(w http.ResponseWriter, _ *http.Request) error {
	w.Header()["Via"] = []string{"1.1 Caddy"}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	_, err := w.Write([]byte("ok"))
	return err
}

// BenchmarkFlyHeaders: what fly_headers adds to a request that reaches
// its app, without the proxying itself.
func BenchmarkFlyHeaders(b *testing.B) {
	fly := webApps(b)
	h := &Headers{app: fly, region: "iad", logger: zap.NewNop()}
	b.ReportAllocs()
	for b.Loop() {
		r, _ := flyRequest("http://web.edge.test/x", "127.0.0.1:80", nil)
		if err := h.ServeHTTP(httptest.NewRecorder(), r, okNext{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRequestSetup is the same request without fly_headers, to
// subtract.
func BenchmarkRequestSetup(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		r, _ := flyRequest("http://web.edge.test/x", "127.0.0.1:80", nil)
		if err := (okNext{}).ServeHTTP(httptest.NewRecorder(), r); err != nil {
			b.Fatal(err)
		}
	}
}
