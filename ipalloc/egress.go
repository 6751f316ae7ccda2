package ipalloc

import (
	"context"
	"slices"
	"strings"

	"go.uber.org/zap"
)

// EgressIPs returns the egress pairs of app's machines, or of machine id
// only when id is not "".
func (a *App) EgressIPs(app, id string) ([]EgressIP, error) {
	if err := a.checkHeld(app); err != nil {
		return nil, err
	}
	out := []EgressIP{}
	var err error
	a.store.read(func(st *state) {
		if id != "" && !a.hasMachine(st, app, id) {
			err = notFound("app %s has no machine %s", app, id)
			return
		}
		if as := st.apps[app]; as != nil {
			for mid, e := range as.egress {
				if id == "" || mid == id {
					out = append(out, *e)
				}
			}
		}
	})
	slices.SortFunc(out, func(x, y EgressIP) int { return strings.Compare(x.Machine, y.Machine) })
	return out, err
}

// AllocateEgress gives machine id of app a static egress pair.
func (a *App) AllocateEgress(ctx context.Context, app, id string) (e EgressIP, err error) {
	err = a.store.do(ctx, func(t *txn) error {
		if err := a.known(t.st, app); err != nil {
			return err
		}
		if !a.hasMachine(t.st, app, id) {
			return notFound("app %s has no machine %s", app, id)
		}
		if as := t.st.apps[app]; as != nil && as.egress[id] != nil {
			return conflict("machine %s already has the egress pair %s, %s", id, as.egress[id].V4, as.egress[id].V6)
		}
		if a.pools.egressV4 == nil || a.pools.egressV6 == nil {
			return conflict("egress pairs need both an egress_v4 and an egress_v6 pool")
		}
		v4, ok4 := a.pick(t, a.pools.egressV4)
		v6, ok6 := a.pick(t, a.pools.egressV6)
		if !ok4 || !ok6 {
			return conflict("the egress pool is exhausted")
		}
		e = EgressIP{App: app, Machine: id, V4: v4.String(), V6: v6.String(), CreatedAt: t.now}
		return t.put(egressKey(app, id), e)
	})
	if err == nil {
		a.logger.Info("egress pair allocated", zap.String("app", app), zap.String("machine", id), zap.String("v4", e.V4), zap.String("v6", e.V6))
	}
	return e, err
}

// ReleaseEgress releases the egress pair of machine id that address
// belongs to.
func (a *App) ReleaseEgress(ctx context.Context, app, id, address string) error {
	if err := a.checkHeld(app); err != nil {
		return err
	}
	addr, err := parseAddress(address)
	if err != nil {
		return err
	}
	err = a.store.do(ctx, func(t *txn) error {
		if !a.hasMachine(t.st, app, id) {
			return notFound("app %s has no machine %s", app, id)
		}
		e := t.st.egress[addr.Unmap()]
		if e == nil || e.App != app || e.Machine != id {
			return notFound("machine %s has no egress address %s", id, addr)
		}
		t.del(egressKey(app, id))
		return nil
	})
	if err == nil {
		a.logger.Info("egress pair released", zap.String("app", app), zap.String("machine", id))
	}
	return err
}
