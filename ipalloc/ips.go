package ipalloc

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/flyedge/caddy-flyedge/routing"
	"go.uber.org/zap"
)

// IPs returns the assignments of app, or of every app for "".
func (a *App) IPs(app string) ([]Assignment, error) {
	if app != "" {
		if err := a.checkHeld(app); err != nil {
			return nil, err
		}
	}
	out := []Assignment{}
	a.store.read(func(st *state) {
		for name, as := range st.apps {
			if app != "" && name != app {
				continue
			}
			for _, v := range as.ips {
				out = append(out, *v)
			}
		}
	})
	slices.SortFunc(out, func(x, y Assignment) int {
		return strings.Compare(x.App+" "+x.Type+" "+x.Address, y.App+" "+y.Type+" "+y.Address)
	})
	return out, nil
}

// Allocate gives app an address of type typ (v6, shared_v4 or v4).
// Asking for a shared address an app already has returns that one, with
// created false.
func (a *App) Allocate(ctx context.Context, app, typ string) (asg Assignment, created bool, err error) {
	switch typ {
	case TypeV6, TypeSharedV4, TypeV4:
	default:
		return Assignment{}, false, invalid("type: %q (want v6, shared_v4 or v4)", typ)
	}
	err = a.store.do(ctx, func(t *txn) error {
		if err := a.known(t.st, app); err != nil {
			return err
		}
		var err error
		asg, created, err = a.allocate(t, app, typ)
		return err
	})
	if err == nil && created {
		a.logger.Info("address allocated", zap.String("app", app), zap.String("address", asg.Address), zap.String("type", typ))
	}
	return asg, created, err
}

// allocate picks the address inside a change.
func (a *App) allocate(t *txn, app, typ string) (Assignment, bool, error) {
	as := t.st.apps[app]
	if typ == TypeSharedV4 {
		if a.pools.sharedV4 == nil {
			return Assignment{}, false, conflict("no shared_v4 addresses are configured")
		}
		if as != nil {
			for _, v := range as.ips {
				if v.Type == TypeSharedV4 && a.pools.shared[netip.MustParseAddr(v.Address)] {
					return *v, false, nil
				}
			}
		}
		// the shared address with the fewest apps
		var best netip.Addr
		bestN := -1
		for _, r := range a.pools.sharedV4.ranges {
			n := 0
			if h := t.st.addrs[r.first]; h != nil {
				n = len(h.shared)
			}
			if bestN < 0 || n < bestN {
				best, bestN = r.first, n
			}
		}
		asg := Assignment{Address: best.String(), Type: typ, App: app, Region: "global", CreatedAt: t.now}
		return asg, true, t.put(ipKey(app, best), asg)
	}
	pl := a.pools.v6
	if typ == TypeV4 {
		pl = a.pools.v4
	}
	if pl == nil {
		return Assignment{}, false, conflict("no %s pool is configured", typ)
	}
	addr, ok := a.pick(t, pl)
	if !ok {
		return Assignment{}, false, a.exhausted(t.st, pl, typ)
	}
	asg := Assignment{Address: addr.String(), Type: typ, App: app, Region: "global", CreatedAt: t.now}
	return asg, true, t.put(ipKey(app, addr), asg)
}

// exhausted is the refusal of an allocation from the dedicated pool pl,
// which has no free address: it says how many of the pool's addresses
// apps no longer in the config hold (they route nowhere, and stay taken
// until released), which apps (the first few, most addresses first) and
// how to release them.
func (a *App) exhausted(st *state, pl *pool, typ string) error {
	gone := map[string]int{}
	n := 0
	for addr, h := range st.addrs {
		if h.dedicated == nil || !pl.contains(addr) || a.known(st, h.dedicated.App) == nil {
			continue
		}
		gone[h.dedicated.App]++
		n++
	}
	if n == 0 {
		return conflict("the %s pool is exhausted", typ)
	}
	apps := slices.Collect(maps.Keys(gone))
	slices.SortFunc(apps, func(x, y string) int {
		return cmp.Or(cmp.Compare(gone[y], gone[x]), strings.Compare(x, y))
	})
	const most = 3
	var list []string
	for _, app := range apps[:min(len(apps), most)] {
		list = append(list, fmt.Sprintf("%s (%d)", app, gone[app]))
	}
	if len(apps) > most {
		list = append(list, fmt.Sprintf("%d more", len(apps)-most))
	}
	held := fmt.Sprintf("%d of its addresses are held by apps", n)
	if n == 1 {
		held = "1 of its addresses is held by an app"
	}
	app := apps[0]
	if len(apps) > 1 {
		app = "<app>"
	}
	return conflict("the %s pool is exhausted; %s no longer in the config: %s; release with DELETE /fly/apps/%s/ips/<address>, or everything an app holds with DELETE /fly/apps/%s",
		typ, held, strings.Join(list, ", "), app, app)
}

// pick returns a free address of pl and moves the pool's cursor past it
// (back again if the change t is undone). The first pick after a start
// puts the cursor after the highest address in use, so allocation goes
// on in order.
func (a *App) pick(t *txn, pl *pool) (netip.Addr, bool) {
	st := t.st
	prev, had := a.cursors[pl.name]
	cur, ok := prev, had
	if !ok {
		for addr := range st.addrs {
			if pl.contains(addr) && (!cur.IsValid() || cur.Less(addr)) {
				cur = addr
			}
		}
		for addr := range st.egress {
			if pl.contains(addr) && (!cur.IsValid() || cur.Less(addr)) {
				cur = addr
			}
		}
		if cur.IsValid() {
			cur = cur.Next()
		}
	}
	addr, ok := pl.next(cur, st.used)
	if ok {
		a.cursors[pl.name] = addr.Next()
		t.onUndo(func() {
			if had {
				a.cursors[pl.name] = prev
			} else {
				delete(a.cursors, pl.name)
			}
		})
	}
	return addr, ok
}

// Release takes address from app. Releasing a shared address takes it
// from this app only.
func (a *App) Release(ctx context.Context, app, address string) error {
	if err := a.checkHeld(app); err != nil {
		return err
	}
	addr, err := parseAddress(address)
	if err != nil {
		return err
	}
	addr = addr.Unmap()
	err = a.store.do(ctx, func(t *txn) error {
		as := t.st.apps[app]
		if as == nil || as.ips[addr] == nil {
			return notFound("app %s does not hold %s", app, addr)
		}
		t.del(ipKey(app, addr))
		return nil
	})
	if err == nil {
		a.logger.Info("address released", zap.String("app", app), zap.String("address", addr.String()))
	}
	return err
}

// autoAllocate gives every app with public services that has not had it
// yet a dedicated IPv6 address, and a shared IPv4 address if it serves
// HTTP on 80 or TLS and HTTP on 443, when those pools exist.
func (a *App) autoAllocate(ctx context.Context) error {
	var todo []string
	a.store.read(func(st *state) {
		for _, name := range a.fly.AppNames() {
			if as := st.apps[name]; as != nil && as.auto {
				continue
			}
			if len(a.fly.AppConfig(name).Services) > 0 {
				todo = append(todo, name)
			}
		}
	})
	if len(todo) == 0 {
		return nil
	}
	slices.Sort(todo)
	done := 0
	defer func() {
		if done > 0 {
			a.logger.Info("automatic addresses allocated", zap.Int("apps", done))
		}
	}()
	return a.store.do(ctx, func(t *txn) error {
		done = 0
		var errs []error
		for _, name := range todo {
			if as := t.st.apps[name]; as != nil && as.auto {
				continue // another edge did it meanwhile
			}
			if err := a.autoAllocateApp(t, name, a.fly.AppConfig(name)); err != nil {
				errs = append(errs, fmt.Errorf("app %s: %w", name, err))
				continue
			}
			if err := t.put(autoKey(name), struct{}{}); err != nil {
				return err
			}
			done++
		}
		if len(errs) > 0 {
			a.logger.Error("automatic allocation left apps without addresses", zap.Errors("errors", errs))
		}
		return nil
	})
}

// autoAllocateApp gives app name, defined by cfg, its automatic
// addresses in t.
func (a *App) autoAllocateApp(t *txn, name string, cfg *routing.Application) error {
	have := map[string]bool{}
	if as := t.st.apps[name]; as != nil {
		for _, v := range as.ips {
			have[v.Type] = true
		}
	}
	if a.pools.v6 != nil && !have[TypeV6] {
		if _, _, err := a.allocate(t, name, TypeV6); err != nil {
			return err
		}
		// allocate reads the state, which holds the change only after
		// the transaction; apply it now so the next pick sees it
		if err := t.applyPuts(); err != nil {
			return err
		}
	}
	if a.pools.sharedV4 != nil && !have[TypeSharedV4] && !have[TypeV4] && a.servesWeb(cfg) {
		if _, _, err := a.allocate(t, name, TypeSharedV4); err != nil {
			return err
		}
		if err := t.applyPuts(); err != nil {
			return err
		}
	}
	return nil
}

// servesWeb tells whether an app serves HTTP on port 80 or TLS and HTTP
// on 443 (or the ports configured in their place).
func (a *App) servesWeb(cfg *routing.Application) bool {
	for _, s := range cfg.Services {
		for _, p := range s.Ports {
			if p.Port == a.HTTPPort && p.HandlerSet() == routing.HandlerHTTP {
				return true
			}
			if p.Port == a.HTTPSPort && p.HandlerSet() == routing.HandlerTLS|routing.HandlerHTTP {
				return true
			}
		}
	}
	return false
}
