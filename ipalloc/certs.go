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
//     address (ErrInvalid);
//   - no wildcard that covers a public suffix ("*.com", "*.co.uk",
//     "*.github.io": every name below belongs to someone else), and no
//     public suffix itself (ErrInvalid);
//   - nothing under the edge's base_domain: the names there are the apps'
//     own <app>.<base_domain>, present and future (ErrInvalid);
//   - not a name another app answers to in the config, its default name
//     included (ErrConflict), nor one it added (ErrConflict, checked in the
//     change).
func (a *App) claimable(app, host string) error {
	if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return invalid("hostname: %s is an IP address; certificates and routing by name need a host name", host)
	}
	if !routing.ValidHostname(host, true) || !strings.Contains(host, ".") {
		return invalid("hostname: %q is not a valid host name", host)
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
	}
	return nil
}
