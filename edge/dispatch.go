package edge

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/mholt/caddy-l4/layer4"

	"github.com/flyedge/caddy-flyedge/routing"
)

// dispatch runs a connection the edge's one route took through the steps
// of the handler set the fly_app matcher found for it
// (routing.MatchedHandlers); a connection it did not take goes to the
// HTTP server (handOff). Each set's steps (Handlers.Steps: fly_tls,
// proxy_proto and pg_tls as the set has them, then fly_proxy, or for
// [tls http] fly_tls and then the HTTP server) are chained once, when
// the edge is provisioned, from one instance of each step.
type dispatch struct {
	chains map[routing.Handlers]layer4.Handler
}

// newDispatch provisions the steps and chains them for every handler
// set served at layer 4 first. The steps are loaded by module ID
// (layer4.handlers.<step>), as a route's handlers are: pg_tls lives in
// package pgtls, which this one does not import. The steps that
// terminate TLS (fly_tls, pg_tls) get handshake as their
// handshake_timeout.
func newDispatch(ctx caddy.Context, handshake time.Duration) (*dispatch, error) {
	steps := make(map[string]layer4.NextHandler)
	d := &dispatch{chains: make(map[routing.Handlers]layer4.Handler)}
	for _, hs := range routing.HandlerSets() {
		if !hs.AtLayer4() {
			continue
		}
		names := hs.Steps()
		var chain layer4.Handler = layer4.HandlerFunc(handOff) // [tls http]: the HTTP server; fly_proxy ends the others
		for i := len(names) - 1; i >= 0; i-- {
			step, ok := steps[names[i]]
			if !ok {
				cfg := json.RawMessage("{}")
				if names[i] == "fly_tls" || names[i] == "pg_tls" {
					cfg = json.RawMessage(fmt.Sprintf(`{"handshake_timeout": %d}`, handshake))
				}
				mod, err := ctx.LoadModuleByID("layer4.handlers."+names[i], cfg)
				if err != nil {
					return nil, fmt.Errorf("edge handler %s: %w", names[i], err)
				}
				if step, ok = mod.(layer4.NextHandler); !ok {
					return nil, fmt.Errorf("edge handler %s: %T is not a layer 4 handler", names[i], mod)
				}
				steps[names[i]] = step
			}
			next := chain
			chain = layer4.HandlerFunc(func(cx *layer4.Connection) error { return step.Handle(cx, next) })
		}
		d.chains[hs] = chain
	}
	return d, nil
}

// Handle runs the steps of cx's handler set, or hands cx to the HTTP
// server when the matcher did not take it, or, when the matcher denied
// it (routing.Denied: an address no app holds, say), returns the
// denial: the connection is closed at once, with no answer.
func (d *dispatch) Handle(cx *layer4.Connection) error {
	if err := routing.Denied(cx); err != nil {
		return err
	}
	hs, ok := routing.MatchedHandlers(cx)
	if !ok {
		return handOff(cx)
	}
	chain, ok := d.chains[hs]
	if !ok {
		return fmt.Errorf("no layer 4 steps for handlers %s", hs) // the matcher takes only sets served at layer 4
	}
	return chain.Handle(cx)
}
