// Package flyedge is a set of Caddy modules that give Caddy the public
// network services of Fly.io's edge proxy. Importing this package
// registers every flyedge module and the Caddyfile syntax:
//
//	xcaddy build --with github.com/flyedge/caddy-flyedge
package flyedge

import (
	// the fly app, the fly_app matchers, tls.permission.fly, machine
	// selection and upstreams
	_ "github.com/flyedge/caddy-flyedge/routing"
	// the edge's listeners, the fly network, the per-connection
	// dispatch, and the fly_layer4 and fly_tls_options listener wrappers
	_ "github.com/flyedge/caddy-flyedge/edge"
	// HTTP and layer 4 handlers, and UDP flows
	_ "github.com/flyedge/caddy-flyedge/flyhandlers"
	// the fly.toml parser and the flytoml config adapter
	_ "github.com/flyedge/caddy-flyedge/flytoml"
	// IP assignment, the store and its admin API
	_ "github.com/flyedge/caddy-flyedge/ipalloc"
	// the `caddy fly` commands
	_ "github.com/flyedge/caddy-flyedge/cli"
	// PostgreSQL TLS termination
	_ "github.com/flyedge/caddy-flyedge/pgtls"
	// Caddy's storage on PostgreSQL
	_ "github.com/flyedge/caddy-flyedge/pgstore"
	// Caddyfile global option and directives
	_ "github.com/flyedge/caddy-flyedge/caddyfile"
)
