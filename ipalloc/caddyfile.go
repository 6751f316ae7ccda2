package ipalloc

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/flyedge/caddy-flyedge/edge"
)

// UnmarshalCaddyfile sets up the fly_ips app from Caddyfile tokens;
// repeated blocks add to what earlier ones set. Syntax:
//
//	fly_ips {
//		v6 <prefix...>
//		shared_v4 <address...>
//		v4 <prefix|first-last...>
//		egress_v4 <prefix|first-last...>
//		egress_v6 <prefix|first-last...>
//		auto_allocate on|off
//		apply_egress_rules
//		http_port <port>
//		https_port <port>
//		ports <port|first-last...>
//		udp_ports <port|first-last...>
//		udp_idle_timeout <duration>
//		issuer <name> [...]
//		http_listener <name>
//		share_ports
//	}
//
// issuer takes a tls.issuance module and its Caddyfile syntax, as the
// tls directive's issuer does (issuer internal, issuer acme { ... }).
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var dst *[]string
		switch d.Val() {
		case "v6":
			dst = &a.V6
		case "shared_v4":
			dst = &a.SharedV4
		case "v4":
			dst = &a.V4
		case "egress_v4":
			dst = &a.EgressV4
		case "egress_v6":
			dst = &a.EgressV6
		case "auto_allocate":
			if a.AutoAllocate != nil {
				return d.Err("auto_allocate already specified")
			}
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			switch v {
			case "on":
				on := true
				a.AutoAllocate = &on
			case "off":
				off := false
				a.AutoAllocate = &off
			default:
				return d.Errf("auto_allocate: %q (want on or off)", v)
			}
			continue
		case "ports", "udp_ports":
			name := d.Val()
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			if name == "udp_ports" {
				a.UDPPorts = append(a.UDPPorts, args...)
			} else {
				a.Ports = append(a.Ports, args...)
			}
			continue
		case "udp_idle_timeout":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			if a.edge().UDPIdleTimeout != 0 {
				return d.Err("udp_idle_timeout already specified")
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("udp_idle_timeout %q: %v", v, err)
			}
			a.edge().UDPIdleTimeout = caddy.Duration(dur)
			continue
		case "issuer":
			if !d.NextArg() {
				return d.ArgErr()
			}
			name := d.Val()
			unm, err := caddyfile.UnmarshalModule(d, "tls.issuance."+name)
			if err != nil {
				return err
			}
			a.edge().IssuersRaw = append(a.edge().IssuersRaw, caddyconfig.JSONModuleObject(unm, "module", name, nil))
			continue
		case "apply_egress_rules":
			if d.NextArg() {
				return d.ArgErr()
			}
			a.ApplyEgressRules = true
			continue
		case "share_ports":
			if d.NextArg() {
				return d.ArgErr()
			}
			if a.edge().SharePorts {
				return d.Err("share_ports already specified")
			}
			a.edge().SharePorts = true
			continue
		case "http_listener":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			if a.edge().HTTP != "" {
				return d.Err("http_listener already specified")
			}
			a.edge().HTTP = v
			continue
		case "http_port", "https_port":
			name := d.Val()
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			port, err := strconv.Atoi(v)
			if err != nil {
				return d.Errf("%s: %q is not a port number", name, v)
			}
			dst := &a.HTTPPort
			if name == "https_port" {
				dst = &a.HTTPSPort
			}
			if *dst != 0 {
				return d.Errf("%s already specified", name)
			}
			*dst = port
			continue
		default:
			return d.Errf("unrecognized fly_ips option '%s'", d.Val())
		}
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		*dst = append(*dst, args...)
	}
	return nil
}

// edge returns the edge settings, made on first use.
func (a *App) edge() *edge.Edge {
	if a.Edge == nil {
		a.Edge = new(edge.Edge)
	}
	return a.Edge
}
