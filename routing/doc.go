// Package routing is the decision step of flyedge's data path: it holds
// the `fly` Caddy app (the edge's region, the region catalog and the
// registry of apps, services, addresses, host names and machines), the
// one resolver that says which app and service port a connection or
// request gets (App.Resolve), the modules that ask it at the edges of
// the data path (the fly_app matchers for HTTP and layer 4 in
// matchers.go, tls.permission.fly in permission.go), and machine
// selection (force/prefer instance, prefer region, nearest healthy) for
// Caddy's reverse proxy and caddy-l4's proxy. What it keeps of one
// request or connection (its route, and what selection and the handlers
// learned of it) is in state.go.
//
// A connection flows: the edge (package edge), Caddy or caddy-l4 accepts
// it → routing resolves the app (every matcher, handler, listener wrapper
// and the TLS permission ask the same resolver) → the handlers in
// flyhandlers and pgtls run the port's handler list → routing picks a
// machine → the proxy sends the bytes. Routing opens no listeners and relays no bytes.
//
// What the edge learns at run time (addresses, host names added through
// the certs API, machines registered through the admin API) comes from
// the ipalloc package's store, which pushes it with App.SetLive before it
// acknowledges a change.
package routing
