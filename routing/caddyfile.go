package routing

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile sets up the fly app from Caddyfile tokens; repeated
// blocks add to what earlier ones set. Syntax:
//
//	fly {
//		region <code>
//		base_domain <domain>
//		via <name>
//		queue_timeout <duration>
//		failover {
//			attempts <n>
//			fail_duration <duration>
//		}
//		add_region <code> <country> <continent> <latitude> <longitude> [<city>]
//		app <name> {
//			hostnames <hostname...>
//			org <name>
//			machine <id> <region> <address> [started|stopped] [{
//				process_group <name>
//			}]
//			service <internal_port> [tcp|udp] {
//				processes <group...>
//				port <port> [<handler...>] [{
//					force_https
//					alpn <protocol...>
//					tls_versions <TLSv1.2|TLSv1.3...>
//					default_self_signed
//					proxy_proto_version <v1|v2>
//				}]
//				concurrency <requests|connections> <soft_limit> <hard_limit>
//				h2_backend
//				response {
//					pristine
//					header <name> <value...>
//					header -<name>
//				}
//				check <tcp|http> [<path>] [{
//					interval <duration>
//					timeout <duration>
//					grace_period <duration>
//					header <name> <value>
//					protocol <http|https>
//					tls_skip_verify
//					tls_server_name <name>
//				}]
//			}
//		}
//	}
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "region":
			if a.Region != "" {
				return d.Err("region already specified")
			}
			if !d.AllArgs(&a.Region) {
				return d.ArgErr()
			}
		case "base_domain":
			if a.BaseDomain != "" {
				return d.Err("base_domain already specified")
			}
			if !d.AllArgs(&a.BaseDomain) {
				return d.ArgErr()
			}
		case "via":
			if a.Via != "" {
				return d.Err("via already specified")
			}
			if !d.AllArgs(&a.Via) {
				return d.ArgErr()
			}
		case "queue_timeout":
			if a.QueueTimeout != 0 {
				return d.Err("queue_timeout already specified")
			}
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("queue_timeout %q: %v", v, err)
			}
			a.QueueTimeout = caddy.Duration(dur)
		case "failover":
			if a.Failover != nil {
				return d.Err("failover already specified")
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			a.Failover = new(Failover)
			if err := a.Failover.unmarshalCaddyfile(d); err != nil {
				return err
			}
		case "add_region":
			args := d.RemainingArgs()
			if len(args) != 5 && len(args) != 6 {
				return d.ArgErr()
			}
			lat, err := strconv.ParseFloat(args[3], 64)
			if err != nil {
				return d.Errf("add_region %s: latitude %q: %v", args[0], args[3], err)
			}
			lon, err := strconv.ParseFloat(args[4], 64)
			if err != nil {
				return d.Errf("add_region %s: longitude %q: %v", args[0], args[4], err)
			}
			r := Region{Country: args[1], Continent: args[2], Latitude: lat, Longitude: lon}
			if len(args) == 6 {
				r.City = args[5]
			}
			if a.Regions == nil {
				a.Regions = make(map[string]Region)
			}
			if _, ok := a.Regions[args[0]]; ok {
				return d.Errf("add_region %s already specified", args[0])
			}
			a.Regions[args[0]] = r
		case "app":
			var name string
			if !d.Args(&name) {
				return d.ArgErr()
			}
			if d.NextArg() {
				return d.ArgErr()
			}
			if a.Apps == nil {
				a.Apps = make(map[string]*Application)
			}
			if _, ok := a.Apps[name]; ok {
				return d.Errf("app %s already specified", name)
			}
			app := new(Application)
			if err := app.unmarshalCaddyfile(d); err != nil {
				return err
			}
			a.Apps[name] = app
		default:
			return d.Errf("unrecognized fly option '%s'", d.Val())
		}
	}
	return nil
}

func (app *Application) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "hostnames":
			hosts := d.RemainingArgs()
			if len(hosts) == 0 {
				return d.ArgErr()
			}
			app.Hostnames = append(app.Hostnames, hosts...)
		case "machine":
			args := d.RemainingArgs()
			if len(args) != 3 && len(args) != 4 {
				return d.ArgErr()
			}
			m := &Machine{ID: args[0], Region: args[1], Address: args[2]}
			if len(args) == 4 {
				m.State = args[3]
			}
			for nesting := d.Nesting(); d.NextBlock(nesting); {
				switch d.Val() {
				case "process_group":
					if m.ProcessGroup != "" {
						return d.Err("process_group already specified")
					}
					if !d.AllArgs(&m.ProcessGroup) {
						return d.ArgErr()
					}
				default:
					return d.Errf("unrecognized machine option '%s'", d.Val())
				}
			}
			app.Machines = append(app.Machines, m)
		case "org":
			if app.Org != "" {
				return d.Err("org already specified")
			}
			if !d.AllArgs(&app.Org) {
				return d.ArgErr()
			}
		case "service":
			var port string
			if !d.Args(&port) {
				return d.ArgErr()
			}
			var proto string
			if d.NextArg() {
				proto = d.Val()
				if proto != "tcp" && proto != "udp" {
					return d.Errf("service %s: protocol %q (want tcp or udp)", port, proto)
				}
				if d.NextArg() {
					return d.ArgErr()
				}
			}
			ip, err := strconv.Atoi(port)
			if err != nil {
				return d.Errf("service: internal port %q: not a number", port)
			}
			s := &Service{InternalPort: ip, Protocol: proto}
			if err := s.unmarshalCaddyfile(d); err != nil {
				return err
			}
			app.Services = append(app.Services, s)
		default:
			return d.Errf("unrecognized fly app option '%s'", d.Val())
		}
	}
	return nil
}

func (s *Service) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "processes":
			groups := d.RemainingArgs()
			if len(groups) == 0 {
				return d.ArgErr()
			}
			s.Processes = append(s.Processes, groups...)
		case "port":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(args[0])
			if err != nil {
				return d.Errf("port %q: not a number", args[0])
			}
			p := &Port{Port: n, Handlers: args[1:]}
			if err := p.unmarshalCaddyfile(d); err != nil {
				return err
			}
			s.Ports = append(s.Ports, p)
		case "concurrency":
			if s.Concurrency != nil {
				return d.Err("concurrency already specified")
			}
			var typ, soft, hard string
			if !d.AllArgs(&typ, &soft, &hard) {
				return d.ArgErr()
			}
			c := &Concurrency{Type: typ}
			var err error
			if c.SoftLimit, err = strconv.Atoi(soft); err != nil {
				return d.Errf("concurrency: soft_limit %q: not a number", soft)
			}
			if c.HardLimit, err = strconv.Atoi(hard); err != nil {
				return d.Errf("concurrency: hard_limit %q: not a number", hard)
			}
			s.Concurrency = c
		case "h2_backend":
			if d.NextArg() {
				return d.ArgErr()
			}
			if s.HTTPOptions == nil {
				s.HTTPOptions = new(HTTPOptions)
			}
			if s.HTTPOptions.H2Backend {
				return d.Err("h2_backend already specified")
			}
			s.HTTPOptions.H2Backend = true
		case "response":
			if d.NextArg() {
				return d.ArgErr()
			}
			if s.HTTPOptions == nil {
				s.HTTPOptions = new(HTTPOptions)
			}
			if s.HTTPOptions.Response != nil {
				return d.Err("response already specified")
			}
			r := new(HTTPResponse)
			if err := r.unmarshalCaddyfile(d); err != nil {
				return err
			}
			s.HTTPOptions.Response = r
		case "check":
			args := d.RemainingArgs()
			if len(args) != 1 && len(args) != 2 {
				return d.ArgErr()
			}
			c := &Check{Type: args[0]}
			if len(args) == 2 {
				c.Path = args[1]
			}
			for n := d.Nesting(); d.NextBlock(n); {
				opt := d.Val()
				var dst *caddy.Duration
				switch opt {
				case "header":
					var name, val string
					if !d.AllArgs(&name, &val) {
						return d.ArgErr()
					}
					if _, dup := c.Headers[name]; dup {
						return d.Errf("header %s already specified", name)
					}
					if c.Headers == nil {
						c.Headers = make(map[string]string)
					}
					c.Headers[name] = val
					continue
				case "protocol", "tls_server_name":
					dst := &c.Protocol
					if opt == "tls_server_name" {
						dst = &c.TLSServerName
					}
					if *dst != "" {
						return d.Errf("%s already specified", opt)
					}
					if !d.AllArgs(dst) {
						return d.ArgErr()
					}
					continue
				case "tls_skip_verify":
					if d.NextArg() {
						return d.ArgErr()
					}
					c.TLSSkipVerify = true
					continue
				case "interval":
					dst = &c.Interval
				case "timeout":
					dst = &c.Timeout
				case "grace_period":
					dst = &c.GracePeriod
				default:
					return d.Errf("unrecognized check option '%s'", opt)
				}
				if *dst != 0 {
					return d.Errf("%s already specified", opt)
				}
				var v string
				if !d.AllArgs(&v) {
					return d.ArgErr()
				}
				dur, err := caddy.ParseDuration(v)
				if err != nil {
					return d.Errf("%s %q: %v", opt, v, err)
				}
				*dst = caddy.Duration(dur)
			}
			s.Checks = append(s.Checks, c)
		default:
			return d.Errf("unrecognized fly service option '%s'", d.Val())
		}
	}
	return nil
}

func (p *Port) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		switch opt {
		case "force_https", "default_self_signed":
			if d.NextArg() {
				return d.ArgErr()
			}
			if opt == "force_https" {
				if p.ForceHTTPS {
					return d.Err("force_https already specified")
				}
				p.ForceHTTPS = true
				continue
			}
			if p.TLSOptions == nil {
				p.TLSOptions = new(TLSOptions)
			}
			if p.TLSOptions.DefaultSelfSigned {
				return d.Err("default_self_signed already specified")
			}
			p.TLSOptions.DefaultSelfSigned = true
		case "alpn", "tls_versions":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			if p.TLSOptions == nil {
				p.TLSOptions = new(TLSOptions)
			}
			dst := &p.TLSOptions.ALPN
			if opt == "tls_versions" {
				dst = &p.TLSOptions.Versions
			}
			if *dst != nil {
				return d.Errf("%s already specified", opt)
			}
			*dst = args
		case "proxy_proto_version":
			if p.ProxyProtoOptions != nil {
				return d.Err("proxy_proto_version already specified")
			}
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			p.ProxyProtoOptions = &ProxyProtoOptions{Version: strings.ToLower(v)}
		default:
			return d.Errf("unrecognized fly port option '%s'", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.App             = (*App)(nil)
	_ caddy.Provisioner     = (*App)(nil)
	_ caddy.CleanerUpper    = (*App)(nil)
	_ caddyfile.Unmarshaler = (*App)(nil)
)

// unmarshalCaddyfile reads a service's response block:
//
//	response {
//		pristine
//		header <name> <value...>
//		header -<name>
//	}
func (r *HTTPResponse) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "pristine":
			if d.NextArg() {
				return d.ArgErr()
			}
			if r.Pristine {
				return d.Err("pristine already specified")
			}
			r.Pristine = true
		case "header":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			name, remove := strings.CutPrefix(args[0], "-")
			if remove != (len(args) == 1) {
				return d.Errf("header %s: want a name and values, or -<name> alone to remove it", args[0])
			}
			if r.Headers == nil {
				r.Headers = make(map[string]any)
			}
			if _, ok := r.Headers[name]; ok {
				return d.Errf("header %s already specified", name)
			}
			switch {
			case remove:
				r.Headers[name] = false
			case len(args) == 2:
				r.Headers[name] = args[1]
			default:
				vals := make([]any, 0, len(args)-1)
				for _, v := range args[1:] {
					vals = append(vals, v)
				}
				r.Headers[name] = vals
			}
		default:
			return d.Errf("unrecognized response option '%s'", d.Val())
		}
	}
	return nil
}

// unmarshalCaddyfile reads a failover block.
func (f *Failover) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		var v string
		if !d.AllArgs(&v) {
			return d.ArgErr()
		}
		switch opt {
		case "attempts":
			if f.Attempts != 0 {
				return d.Err("attempts already specified")
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return d.Errf("attempts %q: want a positive number", v)
			}
			f.Attempts = n
		case "fail_duration":
			if f.FailDuration != 0 {
				return d.Err("fail_duration already specified")
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil || dur <= 0 {
				return d.Errf("fail_duration %q: want a positive duration", v)
			}
			f.FailDuration = caddy.Duration(dur)
		default:
			return d.Errf("unrecognized failover option '%s'", opt)
		}
	}
	return nil
}
