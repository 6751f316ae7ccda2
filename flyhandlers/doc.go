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
//   - UDP (ListenUDP): the sockets of the edge's UDP ports and their
//     flows, a machine per client, relayed both ways until idle.
//
// The handlers of one connection talk through connection variables
// (connvars.go). The edge's listeners, which run these handlers, are in
// the edge package; PostgreSQL TLS is in the pgtls package.
package flyhandlers
