package edge

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile sets up the fly_edge app from Caddyfile tokens;
// repeated blocks add to what earlier ones set. Syntax:
//
//	fly_edge {
//		ports <port|first-last...>
//		udp_ports <port|first-last...>
//		udp_idle_timeout <duration>
//		matching_timeout <duration>
//		handshake_timeout <duration>
//		issuer <name> [...]
//		http_listener <name>
//		share_ports
//		max_connections <n>
//		max_connections_per_client <n>
//		max_udp_flows <n>
//	}
//
// issuer takes a tls.issuance module and its Caddyfile syntax, as the
// tls directive's issuer does (issuer internal, issuer acme { ... }).
func (e *Edge) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		ok, err := e.UnmarshalOption(d)
		if err != nil {
			return err
		}
		if !ok {
			return d.Errf("unrecognized fly_edge option '%s'", d.Val())
		}
	}
	return nil
}

// UnmarshalOption reads the option under d's cursor, inside a fly_edge
// block, when it is one (ok); the fly_ips global option reads the ones it
// still takes, deprecated, with it.
func (e *Edge) UnmarshalOption(d *caddyfile.Dispenser) (ok bool, err error) {
	switch d.Val() {
	case "ports", "udp_ports":
		name := d.Val()
		args := d.RemainingArgs()
		if len(args) == 0 {
			return true, d.ArgErr()
		}
		if name == "udp_ports" {
			e.UDPPorts = append(e.UDPPorts, args...)
		} else {
			e.Ports = append(e.Ports, args...)
		}
	case "udp_idle_timeout", "matching_timeout", "handshake_timeout":
		name := d.Val()
		field := map[string]*caddy.Duration{"udp_idle_timeout": &e.UDPIdleTimeout, "matching_timeout": &e.MatchingTimeout, "handshake_timeout": &e.HandshakeTimeout}[name]
		var v string
		if !d.AllArgs(&v) {
			return true, d.ArgErr()
		}
		if *field != 0 {
			return true, d.Errf("%s already specified", name)
		}
		dur, err := caddy.ParseDuration(v)
		if err != nil {
			return true, d.Errf("%s %q: %v", name, v, err)
		}
		*field = caddy.Duration(dur)
	case "issuer":
		if !d.NextArg() {
			return true, d.ArgErr()
		}
		name := d.Val()
		unm, err := caddyfile.UnmarshalModule(d, "tls.issuance."+name)
		if err != nil {
			return true, err
		}
		e.IssuersRaw = append(e.IssuersRaw, caddyconfig.JSONModuleObject(unm, "module", name, nil))
	case "share_ports":
		if d.NextArg() {
			return true, d.ArgErr()
		}
		if e.SharePorts {
			return true, d.Err("share_ports already specified")
		}
		e.SharePorts = true
	case "http_listener":
		var v string
		if !d.AllArgs(&v) {
			return true, d.ArgErr()
		}
		if e.HTTP != "" {
			return true, d.Err("http_listener already specified")
		}
		e.HTTP = v
	case "max_connections", "max_connections_per_client", "max_udp_flows":
		name := d.Val()
		var v string
		if !d.AllArgs(&v) {
			return true, d.ArgErr()
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return true, d.Errf("%s: %q is not a positive number", name, v)
		}
		dst := map[string]*int{"max_connections": &e.MaxConnections, "max_connections_per_client": &e.MaxConnectionsPerClient, "max_udp_flows": &e.MaxUDPFlows}[name]
		if *dst != 0 {
			return true, d.Errf("%s already specified", name)
		}
		*dst = n
	default:
		return false, nil
	}
	return true, nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Edge)(nil)
