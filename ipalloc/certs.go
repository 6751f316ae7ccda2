package ipalloc

import (
	"context"
	"slices"
	"strings"

	"github.com/flyedge/caddy-flyedge/routing"
	"go.uber.org/zap"
)

// Certs returns the custom host names of app.
func (a *App) Certs(app string) ([]Cert, error) {
	if err := a.checkApp(app); err != nil {
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
// has returns it with created false.
func (a *App) AddCert(ctx context.Context, app, hostname string) (c Cert, created bool, err error) {
	if err := a.checkApp(app); err != nil {
		return Cert{}, false, err
	}
	host := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(hostname), "."))
	if !routing.ValidHostname(host, true) || !strings.Contains(host, ".") {
		return Cert{}, false, badRequest("hostname: %q is not a valid host name", hostname)
	}
	if owner := a.fly.HostOwner(host); owner != "" {
		if owner == app {
			return Cert{}, false, conflict("%s is already a host name of app %s in the config", host, app)
		}
		return Cert{}, false, conflict("hostname %s is taken by app %s", host, owner)
	}
	err = a.store.do(ctx, func(t *txn) error {
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
	if err := a.checkApp(app); err != nil {
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
