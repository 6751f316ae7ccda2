// Package ipalloc assigns the edge's addresses to apps and routes each
// connection by the address it arrived on: dedicated IPv6 and IPv4
// addresses, shared IPv4 addresses routed by host name, custom host
// names (certificates), static egress pairs of machines, and machines
// registered at run time. The state lives in Caddy's storage, so several
// edges can share it. It provides the fly_ips app, the admin API under
// /fly/, the fly_app matchers for HTTP and layer 4, the tls.permission.fly
// module for on-demand certificates, and the `caddy fly` commands.
package ipalloc

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/flyedge/caddy-flyedge/routing"
)

func init() {
	caddy.RegisterModule(new(App))
}

// App is the `fly_ips` Caddy app: the address pools and the assignments
// of the edge. With any ingress pool configured, the edge routes by
// destination address: a connection to an app's dedicated address goes
// to that app, one to a shared IPv4 address to the app that holds the
// address and answers to the TLS server name or HTTP host, and any other
// connection to no app at all (default deny).
type App struct {
	Pools

	// Give every app with public services a dedicated IPv6 address the
	// first time it is configured, and a shared IPv4 address when it
	// serves HTTP on port 80 or TLS and HTTP on 443, as Fly.io does on
	// an app's first deploy. Default: true.
	AutoAllocate *bool `json:"auto_allocate,omitempty"`

	// The edge ports that count as Fly's 80 (http) and 443 (tls, http)
	// for the automatic shared IPv4 address, for an edge that serves the
	// web on other ports. Default: 80 and 443.
	HTTPPort  int `json:"http_port,omitempty"`
	HTTPSPort int `json:"https_port,omitempty"`

	pools    *pools
	fly      *routing.App
	store    *store
	storeKey string
	cursors  map[string]netip.Addr
	logger   *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "fly_ips",
		New: func() caddy.Module { return new(App) },
	}
}

var stores = caddy.NewUsagePool()

// Provision parses the pools, opens the state in Caddy's storage and,
// when ingress pools are configured, makes the fly app route by address.
func (a *App) Provision(ctx caddy.Context) error {
	fly, err := routing.FromContext(ctx)
	if err != nil {
		return err
	}
	return a.setup(ctx, fly, ctx.Storage(), ctx.Logger())
}

func (a *App) setup(ctx context.Context, fly *routing.App, storage certmagic.Storage, logger *zap.Logger) error {
	a.logger = logger
	for _, f := range []struct {
		name string
		port *int
		def  int
	}{{"http_port", &a.HTTPPort, 80}, {"https_port", &a.HTTPSPort, 443}} {
		if *f.port == 0 {
			*f.port = f.def
		}
		if *f.port < 1 || *f.port > 65535 {
			return fmt.Errorf("%s: %d is not a port number (1-65535)", f.name, *f.port)
		}
	}
	p, err := a.Pools.parse()
	if err != nil {
		return err
	}
	a.pools = p
	a.fly = fly
	a.cursors = make(map[string]netip.Addr)
	a.storeKey = fmt.Sprintf("%T:%v", storage, storage)
	v, _, err := stores.LoadOrNew(a.storeKey, func() (caddy.Destructor, error) {
		return openStore(ctx, storage, logger.Named("store"))
	})
	if err != nil {
		return err
	}
	a.store = v.(*store)
	if a.routesByAddress() {
		fly.SetAddressBook(a)
	}
	return nil
}

// routesByAddress tells whether any ingress pool is configured.
func (a *App) routesByAddress() bool {
	return a.pools.v6 != nil || a.pools.sharedV4 != nil || a.pools.v4 != nil
}

// Start hands the machines registered at run time to the fly app, keeps
// them in step with the storage, and gives new apps their automatic
// addresses.
func (a *App) Start() error {
	a.store.start()
	onChange := func(apps map[string]bool) { a.syncMachines(apps) }
	a.store.onChange.Store(&onChange)
	a.syncMachines(nil)
	if a.AutoAllocate == nil || *a.AutoAllocate {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := a.autoAllocate(ctx); err != nil {
			a.logger.Error("automatic address allocation", zap.Error(err))
		}
	}
	return nil
}

// Stop does nothing: the store keeps following the storage for the next
// config, whose Start takes over the change notifications.
func (a *App) Stop() error { return nil }

// Cleanup releases the store.
func (a *App) Cleanup() error {
	if a.store != nil {
		_, err := stores.Delete(a.storeKey)
		return err
	}
	return nil
}

// syncMachines gives the fly app the run-time machines of apps (nil: of
// every app); apps whose machines did not change are left alone.
func (a *App) syncMachines(apps map[string]bool) {
	if apps == nil {
		apps = make(map[string]bool)
		a.store.read(func(st *state) {
			for name, as := range st.apps {
				if len(as.machines) > 0 {
					apps[name] = true
				}
			}
		})
		for _, name := range a.fly.AppNames() {
			if len(a.fly.LiveMachines(name)) > 0 {
				apps[name] = true
			}
		}
	}
	for name := range apps {
		if !a.fly.HasApp(name) {
			continue
		}
		var ms []*routing.Machine
		a.store.read(func(st *state) {
			if as := st.apps[name]; as != nil {
				for _, m := range as.machines {
					ms = append(ms, m)
				}
			}
		})
		slices.SortFunc(ms, func(x, y *routing.Machine) int { return strings.Compare(x.ID, y.ID) })
		if slices.EqualFunc(ms, a.fly.LiveMachines(name), func(x, y *routing.Machine) bool { return *x == *y }) {
			continue
		}
		if err := a.fly.SetMachines(name, ms); err != nil {
			a.logger.Error("registering machines", zap.String("app", name), zap.Error(err))
		}
	}
}

// AppFor implements routing.AddressBook.
func (a *App) AppFor(local netip.Addr, name string) (string, bool) {
	a.store.mu.RLock()
	defer a.store.mu.RUnlock()
	h := a.store.st.addrs[local]
	if h == nil {
		return "", false
	}
	if h.dedicated != nil {
		return h.dedicated.App, true
	}
	if !a.pools.shared[local] {
		return "", false
	}
	app := a.hostApp(a.store.st, name)
	if app == "" || h.shared[app] == nil {
		return "", false
	}
	return app, true
}

// AddressKind tells what local is: a dedicated address of an app, a
// shared address, or neither ("").
func (a *App) AddressKind(local netip.Addr) string {
	a.store.mu.RLock()
	defer a.store.mu.RUnlock()
	h := a.store.st.addrs[local]
	switch {
	case h != nil && h.dedicated != nil:
		return h.dedicated.Type
	case a.pools.shared[local]:
		return TypeSharedV4
	}
	return ""
}

// hostApp returns the app that answers to host name: its own name, a
// host name of its config, or a custom host name; an exact name first,
// then a wildcard for the first label. The caller holds the read lock.
func (a *App) hostApp(st *state, name string) string {
	if name == "" {
		return ""
	}
	if app := a.fly.HostOwner(name); app != "" {
		return app
	}
	if c := st.certs[name]; c != nil {
		return c.App
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		wild := "*" + name[i:]
		if app := a.fly.HostOwner(wild); app != "" {
			return app
		}
		if c := st.certs[wild]; c != nil {
			return c.App
		}
	}
	return ""
}

// HostApp returns the app that answers to a host name, or "".
func (a *App) HostApp(name string) string {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	a.store.mu.RLock()
	defer a.store.mu.RUnlock()
	return a.hostApp(a.store.st, name)
}

// Interface guards
var (
	_ caddy.App           = (*App)(nil)
	_ caddy.Provisioner   = (*App)(nil)
	_ caddy.CleanerUpper  = (*App)(nil)
	_ routing.AddressBook = (*App)(nil)
)
