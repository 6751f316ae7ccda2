// Command caddy is Caddy with the standard modules, caddy-l4 and flyedge.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/flyedge/caddy-flyedge"
	_ "github.com/mholt/caddy-l4"
)

func main() {
	caddycmd.Main()
}
