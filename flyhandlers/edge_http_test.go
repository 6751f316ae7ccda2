package flyhandlers

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/routing"
)

// testEdge is fly_headers in front of Caddy's reverse_proxy on a real
// loopback listener, with one machine, an httptest server, behind it: a
// request to http://web.edge.test on the edge's port reaches the machine
// as it would through Caddy.
type testEdge struct {
	h       *Headers
	url     string // the edge's base URL
	machine *httptest.Server
	client  *http.Client // dials the edge whatever the URL's host
}

// newTestEdge starts a machine answering with machine and an edge in
// front of it; setup may change the handler before it serves.
func newTestEdge(t *testing.T, machine http.HandlerFunc, setup func(*Headers)) *testEdge {
	t.Helper()
	m := httptest.NewServer(machine)
	t.Cleanup(m.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mport := m.Listener.Addr().(*net.TCPAddr).Port
	fly := newFly(t, map[string]*routing.Application{
		"web": {Services: []*routing.Service{{InternalPort: mport, Ports: []*routing.Port{{Port: portOf(ln), Handlers: []string{"http"}}}}},
			Machines: []*routing.Machine{{ID: "00000000000b01", Region: "iad", Address: "127.0.0.1"}}},
	})
	h := &Headers{app: fly, region: fly.EdgeRegion(), logger: zap.NewNop(),
		ReplayBuffers: defaultReplayBuffers, ReplayBuffersPerApp: defaultReplayBuffersPerApp} // as Provision sets them
	if setup != nil {
		setup(h)
	}
	ctx, err := caddy.ProvisionContext(&caddy.Config{Admin: &caddy.AdminConfig{Disabled: true}}) // reverse_proxy needs the events app
	if err != nil {
		t.Fatal(err)
	}
	rp := &reverseproxy.Handler{Upstreams: reverseproxy.UpstreamPool{{Dial: m.Listener.Addr().String()}}}
	if err := rp.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rp.Cleanup() })
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, &caddyhttp.Server{})
		if err := h.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			return rp.ServeHTTP(w, r, nil)
		})); err != nil { // as Caddy's server answers a handler's error
			status := http.StatusInternalServerError
			var he caddyhttp.HandlerError
			if errors.As(err, &he) && he.StatusCode != 0 {
				status = he.StatusCode
			}
			w.WriteHeader(status)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	dial := ln.Addr().String()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return new(net.Dialer).DialContext(ctx, "tcp", dial)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &testEdge{h: h, url: "http://web.edge.test", machine: m, client: &http.Client{Transport: tr}}
}

// do sends a request to the edge and returns the response's status,
// body and header.
func (e *testEdge) do(t *testing.T, method, path string, body []byte, hdr map[string]string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, e.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == nil {
		req.Body, req.ContentLength = nil, 0
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, string(b), res.Header
}
