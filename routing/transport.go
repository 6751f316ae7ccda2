package routing

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(new(FlyTransport))
}

// FlyTransport is Caddy's http transport that speaks to each app's
// machines the way the app asks for: HTTP/1.1, or HTTP/2 cleartext (h2c)
// for apps whose service sets h2_backend (fly.toml's
// http_service.http_options.h2_backend). Whatever HTTP version the client
// used, an app receives HTTP/1.1 unless it opted in to h2c.
//
// It takes every option of the http transport (timeouts, keep-alive
// pools, ...), which apply to both kinds of connection; its versions
// option is ignored. Requests that the fly upstream source did not route
// use HTTP/1.1.
//
//	reverse_proxy {
//		dynamic fly
//		lb_policy fly
//		transport fly {
//			keepalive_idle_conns_per_host 512
//		}
//	}
type FlyTransport struct {
	reverseproxy.HTTPTransport

	h2c *reverseproxy.HTTPTransport
}

// CaddyModule returns the Caddy module information.
func (*FlyTransport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.fly",
		New: func() caddy.Module { return new(FlyTransport) },
	}
}

// Provision sets up the HTTP/1.1 and the h2c transport.
func (t *FlyTransport) Provision(ctx caddy.Context) error {
	if t.TLS != nil {
		return errors.New("tls: machines are reached over cleartext; the fly transport takes no tls options")
	}
	h2c := t.HTTPTransport // a copy of the config, before provisioning
	t.Versions = []string{"1.1"}
	if err := t.HTTPTransport.Provision(ctx); err != nil {
		return err
	}
	h2c.Versions = []string{"h2c", "2"}
	if err := h2c.Provision(ctx); err != nil {
		return fmt.Errorf("h2c transport: %w", err)
	}
	t.h2c = &h2c
	return nil
}

// RoundTrip sends the request over the connection kind the app asks for.
func (t *FlyTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if rt := RouteOf(req); rt != nil && rt.Service.HTTPOptions != nil && rt.Service.HTTPOptions.H2Backend {
		return t.h2c.RoundTrip(req)
	}
	return t.HTTPTransport.RoundTrip(req)
}

// Cleanup closes both transports' idle connections.
func (t *FlyTransport) Cleanup() error {
	if t.h2c != nil {
		_ = t.h2c.Cleanup()
	}
	return t.HTTPTransport.Cleanup()
}

// Interface guards
var (
	_ caddy.Provisioner  = (*FlyTransport)(nil)
	_ caddy.CleanerUpper = (*FlyTransport)(nil)
	_ http.RoundTripper  = (*FlyTransport)(nil)
)
