package ipalloc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/routing"
)

// Error is a refusal with the HTTP status the admin API answers it with:
// 400 bad input, 404 unknown app, address, host name or machine, 409
// conflict.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

func badRequest(format string, args ...any) error {
	return &Error{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &Error{http.StatusNotFound, fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &Error{http.StatusConflict, fmt.Sprintf(format, args...)}
}

// StatusOf returns the HTTP status for err: its own for an *Error, else
// 500.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return http.StatusInternalServerError
}

func (a *App) checkApp(app string) error {
	if !a.fly.HasApp(app) {
		return notFound("unknown app %q", app)
	}
	return nil
}

// IPs returns the assignments of app, or of every app for "".
func (a *App) IPs(app string) ([]Assignment, error) {
	if app != "" {
		if err := a.checkApp(app); err != nil {
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
	if err := a.checkApp(app); err != nil {
		return Assignment{}, false, err
	}
	switch typ {
	case TypeV6, TypeSharedV4, TypeV4:
	default:
		return Assignment{}, false, badRequest("type: %q (want v6, shared_v4 or v4)", typ)
	}
	err = a.store.do(ctx, func(t *txn) error {
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
	addr, ok := a.pick(t.st, pl)
	if !ok {
		return Assignment{}, false, conflict("the %s pool is exhausted", typ)
	}
	asg := Assignment{Address: addr.String(), Type: typ, App: app, Region: "global", CreatedAt: t.now}
	return asg, true, t.put(ipKey(app, addr), asg)
}

// pick returns a free address of pl and moves the pool's cursor past it.
// The first pick after a start puts the cursor after the highest address
// in use, so allocation goes on in order.
func (a *App) pick(st *state, pl *pool) (netip.Addr, bool) {
	cur, ok := a.cursors[pl.name]
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
	}
	return addr, ok
}

// Release takes address from app. Releasing a shared address takes it
// from this app only.
func (a *App) Release(ctx context.Context, app, address string) error {
	if err := a.checkApp(app); err != nil {
		return err
	}
	addr, err := netip.ParseAddr(address)
	if err != nil {
		return badRequest("%q is not an IP address", address)
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
			if err := a.autoAllocateApp(t, name); err != nil {
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

func (a *App) autoAllocateApp(t *txn, name string) error {
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
		if err := a.applyPending(t); err != nil {
			return err
		}
	}
	if a.pools.sharedV4 != nil && !have[TypeSharedV4] && !have[TypeV4] && a.servesWeb(a.fly.AppConfig(name)) {
		if _, _, err := a.allocate(t, name, TypeSharedV4); err != nil {
			return err
		}
		if err := a.applyPending(t); err != nil {
			return err
		}
	}
	return nil
}

// applyPending applies the puts of t to the state (inside a change that
// makes many allocations), so that later picks see them. The store
// applies them again at the end, which is harmless.
func (a *App) applyPending(t *txn) error {
	for ; t.applied < len(t.order); t.applied++ {
		k := t.order[t.applied]
		if err := t.st.apply(k, t.puts[k], map[string]bool{}); err != nil {
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

// Machines returns the machines of app: the config's and those
// registered at run time.
func (a *App) Machines(app string) ([]*routing.Machine, error) {
	ms, err := a.fly.Machines(app)
	if errors.Is(err, routing.ErrUnknownApp) {
		return nil, notFound("unknown app %q", app)
	}
	return ms, err
}

// PutMachine registers machine m of app, or updates it.
func (a *App) PutMachine(ctx context.Context, app string, m *routing.Machine) (created bool, err error) {
	if err := a.checkApp(app); err != nil {
		return false, err
	}
	if a.configMachine(app, m.ID) {
		return false, conflict("machine %s of app %s is defined in the config; change it there", m.ID, app)
	}
	// validate against the fly app's catalog and other apps' machines
	if err := a.fly.CheckMachine(app, m); err != nil {
		if errors.Is(err, routing.ErrMachineTaken) {
			return false, conflict("%v", err)
		}
		return false, badRequest("%v", err)
	}
	err = a.store.do(ctx, func(t *txn) error {
		as := t.st.apps[app]
		created = as == nil || as.machines[m.ID] == nil
		for name, other := range t.st.apps {
			if name != app && other.machines[m.ID] != nil {
				return conflict("machine ID %s is taken by app %s", m.ID, name)
			}
		}
		return t.put(machineKey(app, m.ID), m)
	})
	if err == nil {
		msg := "machine updated"
		if created {
			msg = "machine registered"
		}
		a.logger.Info(msg, zap.String("app", app), zap.String("machine", m.ID), zap.String("region", m.Region), zap.String("address", m.Address))
	}
	return created, err
}

// RemoveMachine deregisters machine id of app; its egress pair, if any,
// is released with it.
func (a *App) RemoveMachine(ctx context.Context, app, id string) error {
	if err := a.checkApp(app); err != nil {
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

// configMachine tells whether machine id of app is defined in the config.
func (a *App) configMachine(app, id string) bool {
	return slices.ContainsFunc(a.fly.AppConfig(app).Machines, func(c *routing.Machine) bool { return c.ID == id })
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

// EgressIPs returns the egress pairs of app's machines, or of machine id
// only when id is not "".
func (a *App) EgressIPs(app, id string) ([]EgressIP, error) {
	if err := a.checkApp(app); err != nil {
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
	if err := a.checkApp(app); err != nil {
		return EgressIP{}, err
	}
	err = a.store.do(ctx, func(t *txn) error {
		if !a.hasMachine(t.st, app, id) {
			return notFound("app %s has no machine %s", app, id)
		}
		if as := t.st.apps[app]; as != nil && as.egress[id] != nil {
			return conflict("machine %s already has the egress pair %s, %s", id, as.egress[id].V4, as.egress[id].V6)
		}
		if a.pools.egressV4 == nil || a.pools.egressV6 == nil {
			return conflict("egress pairs need both an egress_v4 and an egress_v6 pool")
		}
		v4, ok4 := a.pick(t.st, a.pools.egressV4)
		v6, ok6 := a.pick(t.st, a.pools.egressV6)
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
	if err := a.checkApp(app); err != nil {
		return err
	}
	addr, err := netip.ParseAddr(address)
	if err != nil {
		return badRequest("%q is not an IP address", address)
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
