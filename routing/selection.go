package routing

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func init() {
	caddy.RegisterModule(new(FlySelection))
}

// Request headers that steer machine selection, and the one the edge adds.
const (
	HeaderForceInstance        = "Fly-Force-Instance-Id"
	HeaderPreferInstance       = "Fly-Prefer-Instance-Id"
	HeaderPreferRegion         = "Fly-Prefer-Region"
	HeaderForceRegion          = "Fly-Force-Region"
	HeaderPreferredUnavailable = "Fly-Preferred-Instance-Unavailable"
)

// FlySelection is a load-balancing policy that picks one of the machines
// the `fly` upstream source returned, as Fly.io's proxy does:
//
//   - Fly-Force-Instance-Id: that machine only; if it is unknown or
//     cannot take the request, no machine (the fly_headers handler then
//     answers the client with the reason).
//   - Fly-Prefer-Instance-Id: that machine when it is healthy, else the
//     normal choice, and the request the app receives carries
//     Fly-Preferred-Instance-Unavailable: <id>.
//   - Fly-Prefer-Region: an ordered list of region, country or continent
//     codes (e.g. iad,ord,us,na); the first entry with a healthy machine
//     wins, nearest region of the entry first.
//   - otherwise: a healthy machine in the edge's region, else in the
//     nearest region by great-circle distance; among equals the one with
//     the fewest requests in flight, ties broken at random.
//
// A machine is healthy when it is started, passes the service's active
// checks, and Caddy's passive health checks and concurrency limits let
// the upstream take requests (Upstream.Available).
//
// With upstreams that did not come from the `fly` source, the fallback
// policy chooses.
type FlySelection struct {
	// The policy used for upstreams that are not a fly app's machines.
	// Default: random
	FallbackRaw json.RawMessage `json:"fallback,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	fallback reverseproxy.Selector
	logger   *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*FlySelection) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.fly",
		New: func() caddy.Module { return new(FlySelection) },
	}
}

// Provision loads the fallback policy.
func (s *FlySelection) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	if s.FallbackRaw == nil {
		s.FallbackRaw = caddyconfig.JSONModuleObject(reverseproxy.RandomSelection{}, "policy", "random", nil)
	}
	mod, err := ctx.LoadModule(s, "FallbackRaw")
	if err != nil {
		return fmt.Errorf("loading fallback selection policy: %w", err)
	}
	s.fallback = mod.(reverseproxy.Selector)
	return nil
}

// httpPool adapts the proxy's upstreams to Pool.
type httpPool reverseproxy.UpstreamPool

func (p httpPool) Usable(i int) bool { return p[i].Available() }
func (p httpPool) Load(i int) int    { return p[i].NumRequests() }

// Select chooses a machine for the request.
func (s *FlySelection) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	st := stateOf(r) // one lookup: the context chain is deep here
	rt := st.currentRoute()
	if rt == nil || len(rt.machines) != len(pool) || (len(pool) > 0 && pool[0].Dial != rt.machines[0].dial) {
		return s.fallback.Select(pool, r, w)
	}
	pref := st.preference(r)
	i, outcome := chooseFor(r, rt, httpPool(pool), pref)
	rt.countSelection(outcome)
	switch outcome {
	case PreferredUnavailable:
		r.Header.Set(HeaderPreferredUnavailable, pref.PreferInstance)
	case ForcedUnknown, ForcedUnavailable, ForcedRegionUnavailable, NoneAvailable, AtHardLimit:
		SetUnroutable(r, outcome)
	}
	if i < 0 {
		if c := s.logger.Check(zapcore.DebugLevel, "no machine selected"); c != nil {
			c.Write(zap.String("app", rt.App), zap.String("machine", pref.ForceInstance), zap.Int("outcome", int(outcome)))
		}
		return nil
	}
	if c := s.logger.Check(zapcore.DebugLevel, "machine selected"); c != nil {
		c.Write(zap.String("app", rt.App), zap.String("machine", rt.machines[i].id), zap.String("region", rt.machines[i].region))
	}
	return pool[i]
}

// headerPreference returns what a request's Fly-* headers ask for.
func headerPreference(r *http.Request) Preference {
	h := r.Header // the names are canonical: index the map, as Get would after checking that
	return Preference{
		ForceInstance:  first(h[HeaderForceInstance]),
		PreferInstance: first(h[HeaderPreferInstance]),
		PreferRegions:  first(h[HeaderPreferRegion]),
		ForceRegion:    first(h[HeaderForceRegion]),
	}
}

// first returns a header's first value, or "" (http.Header.Get for a
// name known to be canonical).
func first(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy fly {
//		fallback <policy> [<options>]
//	}
func (s *FlySelection) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume policy name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "fallback":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if s.FallbackRaw != nil {
				return d.Err("fallback policy already specified")
			}
			name := d.Val()
			modID := "http.reverse_proxy.selection_policies." + name
			unm, err := caddyfile.UnmarshalModule(d, modID)
			if err != nil {
				return err
			}
			sel, ok := unm.(reverseproxy.Selector)
			if !ok {
				return d.Errf("module %s (%T) is not a reverseproxy.Selector", modID, unm)
			}
			s.FallbackRaw = caddyconfig.JSONModuleObject(sel, "policy", name, nil)
		default:
			return d.Errf("unrecognized fly policy option '%s'", d.Val())
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*FlySelection)(nil)
	_ reverseproxy.Selector = (*FlySelection)(nil)
	_ caddyfile.Unmarshaler = (*FlySelection)(nil)
)
