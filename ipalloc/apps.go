package ipalloc

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/routing"
)

// AppInfo is one app as GET /fly/apps lists it.
type AppInfo struct {
	// Name of the app.
	Name string `json:"name"`
	// Where the app is defined: "config" (Caddy's config, changed by a
	// config load) or "api" (created through the admin API and kept in
	// the store; every edge sharing the store serves it).
	Source string `json:"source"`
	// The app's organization, if any.
	Org string `json:"org,omitempty"`
	// The edge ports of its services.
	Ports []int `json:"ports"`
	// What keeps part of the app from being served, such as a udp
	// service without a dedicated IPv4 address.
	Notes []string `json:"notes,omitempty"`
}

// Notes tells what keeps part of app (defined by cfg) from being served:
// UDP is served on an app's dedicated IPv4 addresses only, as on Fly.io,
// so a udp service of an app without one gets nothing.
func (a *App) Notes(app string, cfg *routing.Application) []string {
	var notes []string
	checked, hasV4 := false, false
	for si, s := range cfg.Services {
		if s.Protocol != "udp" {
			continue
		}
		if !checked {
			checked = true
			a.store.read(func(st *state) {
				if as := st.apps[app]; as != nil {
					for _, v := range as.ips {
						hasV4 = hasV4 || v.Type == TypeV4
					}
				}
			})
		}
		if !hasV4 {
			notes = append(notes, fmt.Sprintf("services[%d] (udp): UDP is served on dedicated IPv4 addresses only, and app %s has none, so its datagrams are dropped; allocate one with: caddy fly ips allocate-v4 -a %s", si, app, app))
		}
	}
	return notes
}

// Apps returns every app of the edge, by name.
func (a *App) Apps() []AppInfo {
	names := a.fly.AppNames()
	slices.Sort(names)
	out := make([]AppInfo, 0, len(names))
	for _, name := range names {
		cfg := a.fly.AppConfig(name)
		src := a.fly.AppSource(name)
		if cfg == nil {
			continue // destroyed meanwhile
		}
		info := AppInfo{Name: name, Source: src, Org: cfg.Org, Ports: []int{}, Notes: a.Notes(name, cfg)}
		for _, s := range cfg.Services {
			for _, p := range s.Ports {
				info.Ports = append(info.Ports, p.Port)
			}
		}
		slices.Sort(info.Ports)
		out = append(out, info)
	}
	return out
}

// GetApp returns app in the config's JSON shape and where it is defined.
func (a *App) GetApp(app string) (json.RawMessage, string, error) {
	src := a.fly.AppSource(app)
	switch src {
	case "":
		return nil, "", notFound("unknown app %q", app)
	case routing.SourceAPI:
		var raw json.RawMessage
		a.store.read(func(st *state) {
			if as := st.apps[app]; as != nil {
				raw = as.defRaw
			}
		})
		if raw != nil {
			return raw, src, nil
		}
	}
	raw, err := json.Marshal(a.fly.AppConfig(app))
	return raw, src, err
}

// PutApp creates app from its JSON definition (the config's shape,
// without machines and host names), or replaces the definition of an
// app created through the API. The change is stored, in effect on this
// edge when PutApp returns, and reaches every edge sharing the store. A
// new app gets its automatic addresses with it, as on its first deploy
// on Fly.io. With onlyNew, an app that exists is refused (ErrConflict) and left
// as it is. The definition is the whole app: one without an org takes
// the app out of its org.
func (a *App) PutApp(ctx context.Context, app string, data []byte, onlyNew bool) (def json.RawMessage, created bool, err error) {
	return a.putApp(ctx, app, data, onlyNew, false)
}

// DeployApp is PutApp for the definition a fly.toml gives (what `caddy
// fly deploy` sends): a fly.toml has no org (Fly.io sets it when the app
// is created, and a deploy never changes it), so the app keeps the org it
// has, as it keeps its machines, addresses and host names.
func (a *App) DeployApp(ctx context.Context, app string, data []byte, onlyNew bool) (def json.RawMessage, created bool, err error) {
	return a.putApp(ctx, app, data, onlyNew, true)
}

// putApp is PutApp; with keepOrg, a definition without an org gets the
// app's.
func (a *App) putApp(ctx context.Context, app string, data []byte, onlyNew, keepOrg bool) (def json.RawMessage, created bool, err error) {
	cfg, err := routing.ParseApp(app, data)
	if err != nil {
		return nil, false, invalid("%v", err)
	}
	def, err = json.Marshal(cfg)
	if err != nil {
		return nil, false, err
	}
	auto := a.AutoAllocate == nil || *a.AutoAllocate
	var autoErr error
	err = a.store.do(ctx, func(t *txn) error {
		as := t.st.apps[app]
		created = as == nil || as.def == nil
		if onlyNew && !created {
			return conflict("app %s exists already; change it with PUT (caddy fly deploy)", app)
		}
		if err := a.fly.CheckApp(app, cfg); err != nil {
			return refusal(err)
		}
		if created && as != nil {
			// routing takes what the app holds with it: machines it
			// registered before it left the config
			for _, m := range as.machines {
				if err := a.checkMachine(t.st, app, m); err != nil {
					return conflict("app %s still holds machine %s: %v; deregister it first (DELETE /fly/apps/%s/machines/%s)", app, m.ID, err, app, m.ID)
				}
			}
		}
		if keepOrg && cfg.Org == "" && !created && as.def.Org != "" {
			kept := *cfg
			kept.Org = as.def.Org
			var err error
			if def, err = json.Marshal(&kept); err != nil {
				return err
			}
		}
		if err := t.put(appKey(app), json.RawMessage(def)); err != nil {
			return err
		}
		if !auto || len(cfg.Services) == 0 || as != nil && as.auto {
			return nil
		}
		if autoErr = a.autoAllocateApp(t, app, cfg); autoErr != nil {
			return nil // the app is created; a later start tries again
		}
		return t.put(autoKey(app), struct{}{})
	})
	if err != nil {
		return nil, false, err
	}
	msg := "app updated"
	if created {
		msg = "app created"
	}
	a.logger.Info(msg, zap.String("app", app))
	if autoErr != nil {
		a.logger.Error("automatic address allocation", zap.String("app", app), zap.Error(autoErr))
	}
	return def, created, nil
}

// DestroyApp removes an app created through the API and releases what it
// holds: its addresses, host names, machines and egress pairs, as `fly
// apps destroy` does. The connections to it are closed. An app that
// left the config is released the same way; an app of the config is
// refused.
func (a *App) DestroyApp(ctx context.Context, app string) error {
	if a.fly.AppSource(app) == routing.SourceConfig {
		return conflict("app %s is defined in the config; remove it there", app)
	}
	var released int
	err := a.store.do(ctx, func(t *txn) error {
		as := t.st.apps[app]
		if as == nil || as.def == nil && len(as.ips)+len(as.certs)+len(as.machines)+len(as.egress) == 0 {
			return notFound("unknown app %q", app)
		}
		if as.def != nil {
			t.del(appKey(app))
		}
		if as.auto {
			t.del(autoKey(app))
		}
		for addr := range as.ips {
			t.del(ipKey(app, addr))
		}
		for host := range as.certs {
			t.del(certKey(host))
		}
		for id := range as.machines {
			t.del(machineKey(app, id))
		}
		for id := range as.egress {
			t.del(egressKey(app, id))
		}
		released = len(as.ips) + len(as.certs) + len(as.egress)
		return nil
	})
	if err == nil {
		a.logger.Info("app destroyed", zap.String("app", app), zap.Int("released", released))
	}
	return err
}

// checkAppSources refuses a config whose apps include one created
// through the admin API: one name, two definitions.
func (a *App) checkAppSources() error {
	var names []string
	a.store.read(func(st *state) {
		for name, as := range st.apps {
			if as.def != nil && a.fly.AppSource(name) == routing.SourceConfig {
				names = append(names, name)
			}
		}
	})
	if len(names) == 0 {
		return nil
	}
	slices.Sort(names)
	return fmt.Errorf("apps: %s: created through the admin API already (GET /fly/apps lists them); destroy them there (caddy fly apps destroy -a <app>) or rename them in the config", strings.Join(names, ", "))
}
