package ipalloc

import (
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
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
//	}
//
// The edge's options (ports, issuer, ...) are the fly_edge global
// option's; the fly_ips global option still takes them, deprecated (see
// package caddyfile), but this method does not.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		ok, err := a.UnmarshalOption(d)
		if err != nil {
			return err
		}
		if !ok {
			return d.Errf("unrecognized fly_ips option '%s'", d.Val())
		}
	}
	return nil
}

// UnmarshalOption reads the option under d's cursor, inside a fly_ips
// block, when it is one (ok).
func (a *App) UnmarshalOption(d *caddyfile.Dispenser) (ok bool, err error) {
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
			return true, d.Err("auto_allocate already specified")
		}
		var v string
		if !d.AllArgs(&v) {
			return true, d.ArgErr()
		}
		switch v {
		case "on":
			on := true
			a.AutoAllocate = &on
		case "off":
			off := false
			a.AutoAllocate = &off
		default:
			return true, d.Errf("auto_allocate: %q (want on or off)", v)
		}
		return true, nil
	case "apply_egress_rules":
		if d.NextArg() {
			return true, d.ArgErr()
		}
		a.ApplyEgressRules = true
		return true, nil
	case "http_port", "https_port":
		name := d.Val()
		var v string
		if !d.AllArgs(&v) {
			return true, d.ArgErr()
		}
		port, err := strconv.Atoi(v)
		if err != nil {
			return true, d.Errf("%s: %q is not a port number", name, v)
		}
		dst := &a.HTTPPort
		if name == "https_port" {
			dst = &a.HTTPSPort
		}
		if *dst != 0 {
			return true, d.Errf("%s already specified", name)
		}
		*dst = port
		return true, nil
	default:
		return false, nil
	}
	args := d.RemainingArgs()
	if len(args) == 0 {
		return true, d.ArgErr()
	}
	*dst = append(*dst, args...)
	return true, nil
}
