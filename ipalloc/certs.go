package ipalloc

import (
	"context"
	"net/netip"
	"slices"
	"strings"

	"github.com/flyedge/caddy-flyedge/routing"
	"go.uber.org/zap"
	"golang.org/x/net/publicsuffix"
)

// Certs returns the custom host names of app.
func (a *App) Certs(app string) ([]Cert, error) {
	if err := a.checkHeld(app); err != nil {
		return nil, err
	}
	out := []Cert{}
	a.store.read(func(st *state) {
		if as := st.apps[app]; as != nil {
			for _, c := range as.certs {
				out = append(out, *c)
			}
		}
	})
	slices.SortFunc(out, func(x, y Cert) int { return strings.Compare(x.Hostname, y.Hostname) })
	return out, nil
}

// AddCert makes app answer to hostname. Adding a name the app already
// has returns it with created false. The name must be claimable (see
// claimable).
func (a *App) AddCert(ctx context.Context, app, hostname string) (c Cert, created bool, err error) {
	host := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(hostname), "."))
	err = a.store.do(ctx, func(t *txn) error {
		if err := a.known(t.st, app); err != nil {
			return err
		}
		if err := a.claimable(app, host); err != nil {
			return err
		}
		if old := t.st.certs[host]; old != nil {
			if old.App != app {
				return conflict("hostname %s is taken by app %s", host, old.App)
			}
			c = *old
			return nil
		}
		if err := a.claimOverlap(t.st, app, host); err != nil {
			return err
		}
		c, created = Cert{Hostname: host, App: app, CreatedAt: t.now}, true
		return t.put(certKey(host), c)
	})
	if err == nil && created {
		a.logger.Info("hostname added", zap.String("app", app), zap.String("hostname", host))
	}
	return c, created, err
}

// RemoveCert takes hostname from app.
func (a *App) RemoveCert(ctx context.Context, app, hostname string) error {
	if err := a.checkHeld(app); err != nil {
		return err
	}
	host := strings.ToLower(strings.TrimSuffix(hostname, "."))
	err := a.store.do(ctx, func(t *txn) error {
		if old := t.st.certs[host]; old == nil || old.App != app {
			return notFound("app %s has no host name %s", app, host)
		}
		t.del(certKey(host))
		return nil
	})
	if err == nil {
		a.logger.Info("hostname removed", zap.String("app", app), zap.String("hostname", host))
	}
	return err
}

// claimable tells whether app may add host (lower case, no final dot)
// through the certs API:
//
//   - a host name of at least two labels, or "*." and one, never an IP
//     address, nor a name browsers take for one: a last label that is a
//     number (endsInNumber: "127.1", "0x7f.0.0.1", "999.999.999.999"),
//     nor localhost or a name under it, which browsers and resolvers
//     keep for the loopback (ErrInvalid);
//   - no wildcard that covers a public suffix ("*.com", "*.co.uk",
//     "*.github.io": every name below belongs to someone else), and no
//     public suffix itself (ErrInvalid);
//   - nothing under the edge's base_domain: the names there are the apps'
//     own <app>.<base_domain>, present and future (ErrInvalid);
//   - not a name another app answers to in the config, its default name
//     included (ErrConflict), nor one it added (ErrConflict, checked in the
//     change), nor a name within another org's claim or covering one
//     (ErrConflict, claimOverlap, checked in the change).
func (a *App) claimable(app, host string) error {
	if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return invalid("hostname: %s is an IP address; certificates and routing by name need a host name", host)
	}
	if !routing.ValidHostname(host, true) || !strings.Contains(host, ".") {
		return invalid("hostname: %q is not a valid host name", host)
	}
	if endsInNumber(host) {
		return invalid("hostname: %s ends in a number, so browsers read it as an IPv4 address (or refuse it as a bad one); certificates and routing by name need a host name", host)
	}
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return invalid("hostname: %s is under localhost, which browsers and resolvers keep for the loopback (RFC 6761)", host)
	}
	if owner := a.fly.HostOwner(host); owner != "" {
		if owner == app {
			return conflict("%s is already a host name of app %s in the config", host, app)
		}
		return conflict("hostname %s is taken by app %s", host, owner)
	}
	name, wildcard := strings.CutPrefix(host, "*.")
	if suffix, _ := publicsuffix.PublicSuffix(name); suffix == name {
		if wildcard {
			return invalid("hostname: %s covers the public suffix %s, whose names belong to others", host, name)
		}
		return invalid("hostname: %s is a public suffix", host)
	}
	if base := a.fly.BaseDomain; name == base || strings.HasSuffix(name, "."+base) {
		return invalid("hostname: %s is under the edge's base domain %s, whose names are the apps' own (<app>.%s)", host, base, base)
	} else if base != "" && strings.HasSuffix(base, "."+name) {
		return invalid("hostname: %s covers the edge's base domain %s, whose names are the apps' own (<app>.%s)", host, base, base)
	}
	return nil
}

// endsInNumber tells whether browsers take host for an IPv4 address:
// the WHATWG URL standard's "ends in a number" (its last label is
// decimal digits, or 0x and hex digits), which makes "127.1",
// "0x7f.0.0.1" and "010.0.0.1" addresses and "999.999.999.999" an
// invalid one. No top-level domain is a number.
func endsInNumber(host string) bool {
	last := host[strings.LastIndexByte(host, '.')+1:]
	if last == "" {
		return false
	}
	if hex, ok := strings.CutPrefix(strings.ToLower(last), "0x"); ok {
		return strings.Trim(hex, "0123456789abcdef") == ""
	}
	return strings.Trim(last, "0123456789") == ""
}

// claimOverlap refuses (ErrConflict) a host name app may not claim
// because an app of another org holds a name it overlaps, through the
// certs API or in its config's hostnames: one is the other's domain or
// under it, the "*." of a wildcard aside. So `login.victim.com` is
// refused beside another org's `*.victim.com` or `victim.com`, and
// `*.victim.com` or `victim.com` beside another org's `www.victim.com`:
// a domain's names belong to the org that claimed one of them first.
// Apps of one org (both with the same org) share a domain freely, and
// app with itself. A name that only shares a parent (`a.example.com`,
// `b.example.com`) does not overlap. The operator lifts a refusal by
// removing the other claim (DELETE /fly/apps/{other}/certs/{name}), or by
// putting both apps in one org.
func (a *App) claimOverlap(st *state, app, host string) error {
	org := a.orgOf(st, app)
	other := func(owner string) bool {
		return owner != app && (org == "" || a.orgOf(st, owner) != org)
	}
	check := func(claim, owner string) error {
		if claim == host || !other(owner) || !overlap(host, claim) {
			return nil
		}
		return conflict("hostname %s overlaps %s, which app %s holds, and apps of different orgs do not share a domain (%s: %s, %s: %s); remove that claim, or put both apps in one org", host, claim, owner, app, orgName(org), owner, orgName(a.orgOf(st, owner)))
	}
	// in a fixed order, so that the message names the same claim each time
	claims := make([]string, 0, len(st.certs))
	for claim := range st.certs {
		claims = append(claims, claim)
	}
	slices.Sort(claims)
	for _, claim := range claims {
		if err := check(claim, st.certs[claim].App); err != nil {
			return err
		}
	}
	names := a.fly.AppNames()
	slices.Sort(names)
	for _, owner := range names {
		if cfg := a.fly.AppConfig(owner); cfg != nil {
			for _, claim := range cfg.Hostnames {
				if err := check(strings.ToLower(strings.TrimSuffix(claim, ".")), owner); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// overlap tells whether host names x and y overlap: the domain of one
// (the name without a wildcard's "*.") is the other's, or under it.
func overlap(x, y string) bool {
	x, y = strings.TrimPrefix(x, "*."), strings.TrimPrefix(y, "*.")
	return x == y || strings.HasSuffix(x, "."+y) || strings.HasSuffix(y, "."+x)
}

// orgOf returns the org of app: from its definition in the state when
// it was created through the API (as the change sees it), else from the
// config; "" for none.
func (a *App) orgOf(st *state, app string) string {
	if as := st.apps[app]; as != nil && as.def != nil {
		return as.def.Org
	}
	if cfg := a.fly.AppConfig(app); cfg != nil {
		return cfg.Org
	}
	return ""
}

func orgName(org string) string {
	if org == "" {
		return "no org"
	}
	return "org " + org
}
