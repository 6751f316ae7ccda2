// Package edge is the listening step of flyedge's data path: the edge's
// listeners on its ports (Edge, which the fly_ips app runs), the per
// connection switch that runs the steps of the handler set routing
// resolved (dispatch.go), the `fly` network through which it hands HTTP
// connections to a site bound to fly/<name> (network.go), the check that
// no other process listens on its ports (owners*.go), and the listener
// wrappers for configs that compose their own servers: fly_layer4
// (layer4.go) and fly_tls_options (tlsoptions.go).
//
// The handlers it runs are flyhandlers' (and pgtls's pg_tls, loaded by
// module ID); the UDP ports' flows are flyhandlers' too (ListenUDP), the
// edge starts and stops them.
package edge
