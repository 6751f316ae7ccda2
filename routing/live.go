// What the edge learns at run time, as the fly_ips store pushes it: each
// app's LiveApp (SetLive), its machines (SetMachines), address routing,
// and the lifetime of an app created through the admin API.

package routing

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// SetMachines replaces the machines of app that were registered at run
// time (the admin API's machines) with live; the machines of the config
// stay. Routes of the app see the new machines at once; nothing else is
// rebuilt. A machine ID the config or another app uses is refused.
func (a *App) SetMachines(app string, live []*Machine) error {
	reg := a.reg
	reg.change.Lock()
	defer reg.change.Unlock()
	return a.setMachines(app, live)
}

// setMachines is SetMachines; the caller holds reg.change.
func (a *App) setMachines(app string, live []*Machine) error {
	reg := a.reg
	slot := reg.apps[app]
	if slot == nil {
		return fmt.Errorf("%w: %s", ErrUnknownApp, app)
	}
	old := slot.load()
	mine := make(map[string]bool, len(live))
	for i, m := range live {
		if err := m.validate(fmt.Sprintf("machines[%d]", i), a.catalog); err != nil {
			return err
		}
		if mine[m.ID] {
			return fmt.Errorf("machines[%d].id: %s is listed twice", i, m.ID)
		}
		mine[m.ID] = true
		if err := reg.checkTaken(app, m.ID, old.live); err != nil {
			return err
		}
	}
	e := a.newAppEntry(app, old.source, old.config, slices.Clone(live))
	reg.mu.Lock()
	for _, m := range old.live {
		delete(reg.machines, m.ID)
	}
	for _, m := range live {
		reg.machines[m.ID] = app
	}
	slot.cur.Store(e)
	reg.mu.Unlock()
	a.health.restart(e)
	old.health.release()
	return nil
}

// LiveApp is what the edge learned of one app at run time: its
// definition when it was created through the admin API, the addresses
// it holds, the host names added for it, and the machines registered
// for it.
type LiveApp struct {
	// The app as created through the admin API (from ParseApp; it is not
	// changed), or nil.
	Config *Application
	// Dedicated addresses (v6 and v4) of the app.
	Dedicated []netip.Addr
	// Shared addresses the app holds.
	Shared []netip.Addr
	// Host names added through the certs API ("*.x" for a wildcard).
	Hostnames []string
	// Machines registered at run time.
	Machines []*Machine
}

func (l *LiveApp) empty() bool {
	return l.Config == nil && len(l.Dedicated)+len(l.Shared)+len(l.Hostnames)+len(l.Machines) == 0
}

// RouteByAddress turns address routing on: from now on a connection
// reaches an app only through an address the app holds (see Resolve).
// shared are the edge's shared addresses.
func (a *App) RouteByAddress(shared []netip.Addr) {
	reg := a.reg
	reg.mu.Lock()
	defer reg.mu.Unlock()
	reg.byAddress = true
	reg.sharedAddrs = make(map[netip.Addr]bool, len(shared))
	for _, s := range shared {
		reg.sharedAddrs[s] = true
	}
}

// SetLive replaces what the edge knows of app at run time with l; the
// resolver and machine selection use it as soon as SetLive returns.
//
// An app l defines (created through the admin API) is added or replaced;
// one it no longer defines is removed, and the connections to it are
// closed. The config's apps are never replaced: l's definition of one is
// refused with ErrAppDefined, the rest of l still counts. An app that
// neither the config nor l defines keeps its addresses and names (they
// route nowhere) and its machines are ignored. A machine that cannot be
// taken (its ID is the config's or another app's, its region is unknown)
// is left out and named in the error; the rest are taken.
func (a *App) SetLive(app string, l *LiveApp) error {
	reg := a.reg
	reg.change.Lock()
	defer reg.change.Unlock()
	if l == nil || l.empty() {
		l = &LiveApp{}
	}
	var errs []error

	// the app's definition, built before anything is swapped in
	slot := reg.apps[app]
	var old *appEntry
	if slot != nil {
		old = slot.load()
	}
	var next *appEntry
	switch {
	case l.Config != nil && old != nil && old.source == SourceConfig:
		errs = append(errs, fmt.Errorf("%w: app %s was also created through the admin API; the config's is served", ErrAppDefined, app))
	case l.Config != nil && (old == nil || old.config != l.Config):
		if err := a.checkAppLocked(app); err != nil {
			errs = append(errs, err)
			break
		}
		var live []*Machine
		if old != nil {
			live = old.live
		}
		next = a.newAppEntry(app, SourceAPI, l.Config, live)
	}
	remove := l.Config == nil && old != nil && old.source == SourceAPI

	reg.mu.Lock()
	if prev := reg.live[app]; prev != nil {
		for _, addr := range prev.Dedicated {
			if reg.dedicated[addr] == app {
				delete(reg.dedicated, addr)
			}
		}
		for _, addr := range prev.Shared {
			delete(reg.shared, sharedKey{addr, app})
		}
		for _, h := range prev.Hostnames {
			if reg.liveHosts[h] == app {
				delete(reg.liveHosts, h)
			}
		}
	}
	if l.empty() {
		delete(reg.live, app)
	} else {
		reg.live[app] = l
	}
	for _, addr := range l.Dedicated {
		reg.dedicated[addr] = app
	}
	for _, addr := range l.Shared {
		reg.shared[sharedKey{addr, app}] = true
	}
	for _, h := range l.Hostnames {
		reg.liveHosts[h] = app
	}
	switch {
	case next != nil && old == nil:
		slot = new(appSlot)
		slot.cur.Store(next)
		reg.apps[app] = slot
		reg.hosts[app+"."+a.BaseDomain] = slot
		reg.addPorts(app, next.config, slot)
	case next != nil:
		reg.removePorts(app, old.config)
		reg.addPorts(app, next.config, slot)
		slot.cur.Store(next)
	case remove:
		delete(reg.apps, app)
		if reg.hosts[app+"."+a.BaseDomain] == slot {
			delete(reg.hosts, app+"."+a.BaseDomain)
		}
		reg.removePorts(app, old.config)
		for _, m := range old.live {
			delete(reg.machines, m.ID)
		}
	}
	reg.mu.Unlock()

	switch {
	case remove:
		a.health.forget(app)
		old.health.release()
		lifetimes.end(app) // closes the app's connections
		return errors.Join(errs...)
	case next != nil:
		a.health.restart(next)
		if old != nil {
			old.health.release()
		}
	}
	if reg.apps[app] == nil {
		return errors.Join(errs...)
	}

	// a machine the config or another app claims now, or one this edge's
	// catalog does not know, is left out alone: the others still count
	var ms []*Machine
	seen := make(map[string]bool, len(l.Machines))
	for _, m := range l.Machines {
		err := m.validate("machine", a.catalog)
		if err == nil {
			err = reg.checkTaken(app, m.ID, reg.apps[app].load().live)
		}
		if err != nil || seen[m.ID] {
			errs = append(errs, fmt.Errorf("machine %s left out: %w", m.ID, err))
			continue
		}
		seen[m.ID] = true
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(x, y *Machine) int { return strings.Compare(x.ID, y.ID) })
	if !slices.EqualFunc(ms, reg.apps[app].load().live, func(x, y *Machine) bool { return *x == *y }) {
		errs = append(errs, a.setMachines(app, ms))
	}
	return errors.Join(errs...)
}

// LiveApps returns the names of the apps SetLive holds something for.
func (a *App) LiveApps() []string {
	a.reg.mu.RLock()
	defer a.reg.mu.RUnlock()
	names := make([]string, 0, len(a.reg.live))
	for name := range a.reg.live {
		names = append(names, name)
	}
	return names
}

// lifetimes has a context per app name that ends when the app is
// destroyed through the admin API: every connection to the app watches
// it. It is per process, not per config, so a config reload between the
// app's connections and its destruction changes nothing.
var lifetimes = &appLifetimes{m: make(map[string]*appLife)}

type appLifetimes struct {
	mu sync.Mutex
	m  map[string]*appLife
}

type appLife struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func (l *appLifetimes) of(app string) context.Context {
	l.mu.Lock()
	defer l.mu.Unlock()
	life := l.m[app]
	if life == nil {
		life = new(appLife)
		life.ctx, life.cancel = context.WithCancel(context.Background())
		l.m[app] = life
	}
	return life.ctx
}

func (l *appLifetimes) end(app string) {
	l.mu.Lock()
	life := l.m[app]
	delete(l.m, app)
	l.mu.Unlock()
	if life != nil {
		life.cancel()
	}
}
