// The registry's queries: an app's entry, machines, route, config, source
// and host owner, and the names of the apps, as the handlers, the
// fly_ips store and the admin API ask for them.

package routing

import (
	"fmt"
	"slices"
)

// entry returns the current entry of app, or nil.
func (a *App) entry(app string) *appEntry {
	a.reg.mu.RLock()
	slot := a.reg.apps[app]
	a.reg.mu.RUnlock()
	if slot == nil {
		return nil
	}
	return slot.load()
}

// Machines returns the machines of app: those of the config, then the
// ones registered at run time.
func (a *App) Machines(app string) ([]*Machine, error) {
	e := a.entry(app)
	if e == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownApp, app)
	}
	return append(slices.Clone(e.config.Machines), e.live...), nil
}

// LiveMachines returns the machines of app registered at run time.
func (a *App) LiveMachines(app string) []*Machine {
	if e := a.entry(app); e != nil {
		return e.live
	}
	return nil
}

// AppRoute returns the route of app's service on edge port: the target
// of a fly-replay that names the app, not a connection's resolution.
func (a *App) AppRoute(app string, port int) (*Route, error) {
	e := a.entry(app)
	if e == nil {
		return nil, fmt.Errorf("%w: %s", ErrUnknownApp, app)
	}
	return e.route(port)
}

// SameOrg tells whether app from may send requests to app to with
// fly-replay: the same app, or two apps of one organization.
func (a *App) SameOrg(from, to string) bool {
	if from == to {
		return true
	}
	f, t := a.entry(from), a.entry(to)
	if f == nil || t == nil {
		return false
	}
	return f.config.Org != "" && f.config.Org == t.config.Org
}

// HasApp tells whether the edge has an app of that name, from the config
// or the admin API.
func (a *App) HasApp(app string) bool { return a.entry(app) != nil }

// AppNames returns the names of the apps, in no particular order.
func (a *App) AppNames() []string {
	a.reg.mu.RLock()
	defer a.reg.mu.RUnlock()
	names := make([]string, 0, len(a.reg.apps))
	for name := range a.reg.apps {
		names = append(names, name)
	}
	return names
}

// AppConfig returns the config of app, or nil. It is shared: the caller
// must not change it.
func (a *App) AppConfig(app string) *Application {
	if e := a.entry(app); e != nil {
		return e.config
	}
	return nil
}

// AppSource returns where app is defined (SourceConfig or SourceAPI), or
// "" when the edge has no such app.
func (a *App) AppSource(app string) string {
	if e := a.entry(app); e != nil {
		return e.source
	}
	return ""
}

// HostOwner returns the app whose config or name gives it exactly the
// host name host (its <app>.<base_domain>, or an entry of its hostnames,
// "*.x" entries included), or "": the host index's answer (hostApp) when
// it comes from the name itself, not from a wildcard or the certs API.
func (a *App) HostOwner(host string) string {
	a.reg.mu.RLock()
	m := a.reg.hostApp(host)
	a.reg.mu.RUnlock()
	if m.wildcard || m.live {
		return ""
	}
	return m.app
}
