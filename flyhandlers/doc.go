// Package flyhandlers is the handling step of flyedge's data path: once
// routing has resolved a connection's app and service port, these
// modules run the port's handlers and carry the bytes.
//
//   - HTTP: fly_headers (the Fly request headers, readable refusals) and
//     force_https; the request then goes to Caddy's reverse_proxy with
//     routing's upstreams, selection policy and transport.
//   - Layer 4 (caddy-l4): fly_tls (the tls handler), proxy_proto, and
//     fly_proxy, which dials a machine (routing.Route.Connect) and
//     relays the bytes with an idle timeout.
//   - Listener wrappers: fly_layer4 puts caddy-l4 routes in front of an
//     HTTP server so raw TCP and HTTPS share a port; fly_tls_options
//     applies the apps' tls_options to the HTTP server's TLS.
//
// The handlers of one connection talk through connection variables
// (connvars.go). PostgreSQL TLS is in the pgtls package.
package flyhandlers
