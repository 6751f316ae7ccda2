package ipalloc

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/flyedge/caddy-flyedge/routing"
	"go.uber.org/zap"
)

// Machines returns the machines of app: the config's and those
// registered at run time.
// Each has its process group: a machine without one (the config's, or
// one stored before process groups) is listed in the default group, app.
func (a *App) Machines(app string) ([]*routing.Machine, error) {
	ms, err := a.fly.Machines(app)
	if !errors.Is(err, routing.ErrUnknownApp) {
		for i, m := range ms {
			if m.ProcessGroup == "" {
				c := *m // the config's: not changed
				c.ProcessGroup = routing.DefaultProcessGroup
				ms[i] = &c
			}
		}
		return ms, err
	}
	if err := a.checkHeld(app); err != nil { // an app that left the config
		return nil, err
	}
	ms = []*routing.Machine{}
	a.store.read(func(st *state) {
		for _, m := range st.apps[app].machines {
			ms = append(ms, m)
		}
	})
	slices.SortFunc(ms, func(x, y *routing.Machine) int { return strings.Compare(x.ID, y.ID) })
	return ms, nil
}

// PutMachine registers machine m of app, or updates it; with onlyNew, a
// machine the app already has is refused (ErrConflict) and left as it is.
// A machine without a process group is stored in the default one, app.
func (a *App) PutMachine(ctx context.Context, app string, m *routing.Machine, onlyNew bool) (created bool, err error) {
	if m.ProcessGroup == "" {
		m.ProcessGroup = routing.DefaultProcessGroup
	}
	err = a.store.do(ctx, func(t *txn) error {
		if err := a.known(t.st, app); err != nil {
			return err
		}
		as := t.st.apps[app]
		created = as == nil || as.machines[m.ID] == nil
		if onlyNew && !created {
			return conflict("app %s already has machine %s; update it with PUT", app, m.ID)
		}
		if err := a.checkMachine(t.st, app, m); err != nil {
			return err
		}
		return t.put(machineKey(app, m.ID), m)
	})
	if err == nil {
		msg := "machine updated"
		if created {
			msg = "machine registered"
		}
		a.logger.Info(msg, zap.String("app", app), zap.String("machine", m.ID), zap.String("region", m.Region), zap.String("address", m.Address), zap.String("process_group", m.ProcessGroup))
	}
	return created, err
}

// RemoveMachine deregisters machine id of app; its egress pair, if any,
// is released with it.
func (a *App) RemoveMachine(ctx context.Context, app, id string) error {
	if err := a.checkHeld(app); err != nil {
		return err
	}
	if a.configMachine(app, id) {
		return conflict("machine %s of app %s is defined in the config; remove it there", id, app)
	}
	err := a.store.do(ctx, func(t *txn) error {
		as := t.st.apps[app]
		if as == nil || as.machines[id] == nil {
			return notFound("app %s has no machine %s", app, id)
		}
		t.del(machineKey(app, id))
		if as.egress[id] != nil {
			t.del(egressKey(app, id))
		}
		return nil
	})
	if err == nil {
		a.logger.Info("machine deregistered", zap.String("app", app), zap.String("machine", id))
	}
	return err
}

// checkMachine refuses, inside a change, a machine that routing would
// not take for app (see routing's CheckMachine: a bad field, an ID of the
// config's machines) or whose ID another app registered (st.owners): the
// one check of a machine's ID.
func (a *App) checkMachine(st *state, app string, m *routing.Machine) error {
	if err := a.fly.CheckMachine(app, m); err != nil {
		return refusal(err)
	}
	if owner, ok := st.owners[m.ID]; ok && owner != app {
		return conflict("%v: machine %s belongs to app %s", routing.ErrMachineTaken, m.ID, owner)
	}
	return nil
}

// configMachine tells whether machine id of app is defined in the config.
func (a *App) configMachine(app, id string) bool {
	cfg := a.fly.AppConfig(app)
	return cfg != nil && slices.ContainsFunc(cfg.Machines, func(c *routing.Machine) bool { return c.ID == id })
}

// hasMachine tells whether app has machine id, in the config or
// registered at run time.
func (a *App) hasMachine(st *state, app, id string) bool {
	if a.configMachine(app, id) {
		return true
	}
	as := st.apps[app]
	return as != nil && as.machines[id] != nil
}
