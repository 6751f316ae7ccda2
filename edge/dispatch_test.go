package edge

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/flyedge/caddy-flyedge/routing"
)

func init() {
	caddy.RegisterModule(stubPGTLS{})
	caddy.RegisterModule(new(stubIPs))
}

// stubIPs stands in for ipalloc's fly_ips app, which the edge loads and
// this package does not import.
type stubIPs struct{}

func (*stubIPs) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "fly_ips", New: func() caddy.Module { return new(stubIPs) }}
}

func (*stubIPs) Start() error { return nil }
func (*stubIPs) Stop() error  { return nil }

// stubPGTLS stands in for pgtls's pg_tls, which this package does not
// import.
type stubPGTLS struct {
	HandshakeTimeout caddy.Duration `json:"handshake_timeout,omitempty"`
}

// pgTLSRuns counts the connections stubPGTLS handled.
var pgTLSRuns atomic.Int32

func (stubPGTLS) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "layer4.handlers.pg_tls", New: func() caddy.Module { return stubPGTLS{} }}
}

func (stubPGTLS) Handle(*layer4.Connection, layer4.Handler) error {
	pgTLSRuns.Add(1)
	return nil
}

// TestEdgeMatchesOnce counts the fly_app matcher's runs on a tls http
// connection to a shared address (caddy-l4 logs each run at debug
// level): one that asks for the bytes (none are read before matching),
// one that reads the ClientHello and resolves. With a route per handler
// set there were 8 (every route's matcher, and pg_tls's SSLRequest one).
func TestEdgeMatchesOnce(t *testing.T) {
	shared := netip.MustParseAddr("127.20.0.7")
	ln, err := net.Listen("tcp", shared.String()+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": t.TempDir()},
		"apps": map[string]any{
			// the edge adds its policy to the running tls app below, which
			// its storage cleaner (started with it) would read meanwhile
			"tls": map[string]any{"disable_storage_clean": true, "automation": map[string]any{"on_demand": map[string]any{"permission": map[string]any{"module": "fly"}}}},
			"fly": map[string]any{"region": "iad", "base_domain": "edge.test", "apps": map[string]*routing.Application{
				"web": tcpApp(portOf(ln), 8080, []string{"tls", "http"}),
			}},
		},
	}
	raw, _ := json.Marshal(cfg)
	var config caddy.Config
	if err := json.Unmarshal(raw, &config); err != nil {
		t.Fatal(err)
	}
	// provisioned, not started: the edge adds its policy to the tls app
	// before the tls app starts, as in a config Caddy runs
	ctx, err := caddy.ProvisionContext(&config)
	if err != nil {
		t.Fatal(err)
	}
	fly, err := routing.FromContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fly.RouteByAddress([]netip.Addr{shared})
	if err := fly.SetLive("web", &routing.LiveApp{Shared: []netip.Addr{shared}}); err != nil {
		t.Fatal(err)
	}
	var e Edge
	e.Ports = []string{strconv.Itoa(portOf(ln))}
	e.IssuersRaw = []json.RawMessage{json.RawMessage(`{"module": "internal"}`)}
	e.HandOffTimeout = caddy.Duration(50 * time.Millisecond) // no HTTP server takes the connection
	if err := e.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	logger := zap.New(core)

	go func() {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "web.edge.test", InsecureSkipVerify: true})
		if err == nil {
			c.Close()
		}
	}()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	defer conn.Close()
	cx := layer4.WrapConnection(conn, make([]byte, 0, 4096), logger)
	cx.Context = context.WithValue(cx.Context, handOffKey{}, &e)
	_ = e.handler.Handle(cx) // the client ends the handshake
	runs := logs.FilterMessage("matching").FilterField(zap.String("matcher", "layer4.matchers.fly_app")).Len()
	t.Logf("fly_app matcher runs for a tls http connection: %d", runs)
	if runs != 2 {
		t.Errorf("the fly_app matcher ran %d times, want 2 (one asks for the bytes, one matches)", runs)
	}
	if hs, ok := routing.MatchedHandlers(cx); !ok || hs != routing.HandlerTLS|routing.HandlerHTTP {
		t.Errorf("matched handlers %s, %v; want [tls http]", hs, ok)
	}

	// a PostgreSQL SSLRequest on the shared address goes to pg_tls
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			c.Write([]byte{0, 0, 0, 8, 4, 210, 22, 47})
			c.Close()
		}
	}()
	conn2, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	conn2.SetDeadline(time.Now().Add(5 * time.Second))
	defer conn2.Close()
	cx = layer4.WrapConnection(conn2, make([]byte, 0, 4096), logger)
	cx.Context = context.WithValue(cx.Context, handOffKey{}, &e)
	before := pgTLSRuns.Load()
	if err := e.handler.Handle(cx); err != nil {
		t.Fatal(err)
	}
	if hs, ok := routing.MatchedHandlers(cx); !ok || hs != routing.HandlerPGTLS || pgTLSRuns.Load() != before+1 {
		t.Errorf("SSLRequest: matched handlers %s, %v, pg_tls ran %d times; want [pg_tls], once", hs, ok, pgTLSRuns.Load()-before)
	}
}
