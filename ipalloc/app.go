// Package ipalloc is the state behind flyedge's data path: the edge's
// addresses and which app holds them (dedicated IPv6 and IPv4, shared
// IPv4), custom host names (certificates), static egress pairs, and
// machines registered at run time. The state lives in Caddy's storage,
// so several edges can share it, and is pushed into routing's resolver
// before a change is acknowledged.
//
// It provides the fly_ips app (ips.go, certs.go, machines.go,
// egress.go, the store in store.go and state.go), the admin API under
// /fly/ (admin.go, which maps the domain errors of errors.go to HTTP
// status codes, and a file per resource beside it: admin_apps.go,
// admin_ips.go, admin_certs.go, admin_machines.go, admin_egress.go). The
// fly_app matchers and tls.permission.fly, which ask the resolver, are in
// package routing; the `caddy fly` commands that call the admin API are
// in package cli; the fly.toml parser is package flytoml.
package ipalloc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os/exec"
	"slices"
	"sync"
	"sync/atomic"
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

	// Install the egress rules (GET /fly/egress-rules) on this host with
	// nft whenever the egress pairs or machines change, so each machine's
	// outbound traffic leaves from its pair. For an edge that runs on the
	// host of its machines (or their router). Needs nft and the right to
	// change the host's nftables (root or CAP_NET_ADMIN).
	ApplyEgressRules bool `json:"apply_egress_rules,omitempty"`

	// The edge ports that count as Fly's 80 (http) and 443 (tls, http)
	// for the automatic shared IPv4 address, for an edge that serves the
	// web on other ports. Default: 80 and 443.
	HTTPPort  int `json:"http_port,omitempty"`
	HTTPSPort int `json:"https_port,omitempty"`

	// Deprecated: the edge's ports, UDP ports and settings are the
	// fly_edge app's (its ports, udp_ports and the rest of its fields).
	// Set here, they still work: fly_ips loads the fly_edge app with them
	// and logs a warning.
	Ports    []string        `json:"ports,omitempty"`
	UDPPorts []string        `json:"udp_ports,omitempty"`
	Edge     json.RawMessage `json:"edge,omitempty"`

	pools    *pools
	started  atomic.Bool // push applies egress rules from Start on, not at provisioning
	ctx      caddy.Context
	fly      *routing.App
	store    *store
	storeKey string
	cursors  map[string]netip.Addr
	pushMu   sync.Mutex
	logger   *zap.Logger

	onChange, prevOnChange *func(apps map[string]bool) // this config's subscription, and the one it replaced
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
	a.ctx = ctx
	if err := a.loadEdge(ctx); err != nil {
		return err
	}
	return a.setup(ctx, fly, ctx.Storage(), ctx.Logger())
}

// loadEdge loads the edge the deprecated ports, udp_ports and edge fields
// describe, as the fly_edge app would be with them, and warns.
func (a *App) loadEdge(ctx caddy.Context) error {
	if len(a.Ports) == 0 && len(a.UDPPorts) == 0 && a.Edge == nil {
		return nil
	}
	settings := make(map[string]json.RawMessage)
	if a.Edge != nil {
		if err := json.Unmarshal(a.Edge, &settings); err != nil {
			return fmt.Errorf("edge: %w", err)
		}
	}
	for key, v := range map[string][]string{"ports": a.Ports, "udp_ports": a.UDPPorts} {
		if v == nil {
			continue
		}
		if _, ok := settings[key]; ok {
			return fmt.Errorf("%s: set both beside edge and in it; keep one", key)
		}
		settings[key], _ = json.Marshal(v)
	}
	raw, err := json.Marshal(settings)
	if err != nil {
		return err
	}
	if _, err := ctx.AppIfConfigured("fly_edge"); !errors.Is(err, caddy.ErrNotConfigured) {
		return errors.New("ports, udp_ports, edge: the config has a fly_edge app; set the edge's ports and settings there only")
	}
	ctx.Logger().Warn("fly_ips: ports, udp_ports and edge are deprecated: they are the fly_edge app's now " +
		"(JSON: apps.fly_edge with ports, udp_ports and the edge's fields; Caddyfile: the fly_edge global option)")
	// Caddy starts and stops it with the config's apps: an app module is
	// one of the config's apps from the moment it is loaded
	if _, err := ctx.LoadModuleByID("fly_edge", raw); err != nil {
		return fmt.Errorf("edge: %w", err)
	}
	return nil
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
	if a.ApplyEgressRules {
		if _, err := exec.LookPath("nft"); err != nil {
			return fmt.Errorf("apply_egress_rules: nft is not installed (Debian: apt-get install nftables): %w", err)
		}
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
		fly.RouteByAddress(slices.Collect(maps.Keys(a.pools.shared)))
	}
	if err := a.checkAppSources(); err != nil {
		return err
	}
	a.push(nil) // routing is complete before any listener opens
	return nil
}

// routesByAddress tells whether any ingress pool is configured.
func (a *App) routesByAddress() bool {
	return a.pools.v6 != nil || a.pools.sharedV4 != nil || a.pools.v4 != nil
}

// Start hands what the store holds to the fly app, keeps it in step
// with the storage, and gives new apps their automatic addresses.
func (a *App) Start() error {
	a.store.start()
	a.started.Store(true)
	onChange := a.push
	a.onChange = &onChange
	a.prevOnChange = a.store.onChange.Swap(a.onChange)
	a.push(nil) // what changed between Provision and now
	if a.AutoAllocate == nil || *a.AutoAllocate {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := a.autoAllocate(ctx); err != nil {
			a.logger.Error("automatic address allocation", zap.Error(err))
		}
	}
	return nil
}

// Stop gives the change notifications back to the config that had them
// before, when this config still has them: a config whose start failed
// is stopped while the one before it goes on serving, and that one must
// go on learning the store's changes (it reads what it missed). After a
// successful reload the new config has them already, and Stop leaves
// them alone. The store keeps following the storage either way.
func (a *App) Stop() error {
	if a.onChange != nil && a.store.onChange.CompareAndSwap(a.onChange, a.prevOnChange) && a.prevOnChange != nil {
		(*a.prevOnChange)(nil)
	}
	return nil
}

// Cleanup releases the store.
func (a *App) Cleanup() error {
	if a.store != nil {
		_, err := stores.Delete(a.storeKey)
		return err
	}
	return nil
}

// push gives the fly app what the store holds for apps (nil: for every
// app): the addresses they hold, their custom host names and their
// machines. The store calls it after a change is durable and before the
// change is acknowledged, so a 2xx from the admin API means that routing
// already uses the change; it calls it too when it reads other edges'
// changes. Pushes are serialized and each reads the store's current
// state, so the last one leaves the fly app up to date. A change made
// here passed routing's checks inside its transaction (see known,
// checkMachine and PutApp), so SetLive takes it; what SetLive still
// refuses came from elsewhere (another edge with another config, a
// reload), is left out and logged.
func (a *App) push(apps map[string]bool) {
	a.pushMu.Lock()
	defer a.pushMu.Unlock()
	if apps == nil {
		apps = make(map[string]bool)
		a.store.read(func(st *state) {
			for name := range st.apps {
				apps[name] = true
			}
		})
		for _, name := range a.fly.LiveApps() {
			apps[name] = true
		}
	}
	// Apps are pushed in no order, so an app that claims a machine another
	// app of the same batch gave up (another edge moved it between them)
	// can come first and find it still taken: such apps go again after
	// the others, while a round frees something.
	pending := apps
	for len(pending) > 0 {
		retry := make(map[string]bool)
		errs := make(map[string]error)
		for name := range pending {
			var l *routing.LiveApp
			a.store.read(func(st *state) { l = a.liveOf(st.apps[name]) })
			if err := a.fly.SetLive(name, l); err != nil {
				if errors.Is(err, routing.ErrMachineTaken) {
					retry[name] = true
				}
				errs[name] = err
			}
		}
		if len(retry) == 0 || len(retry) == len(pending) {
			for name, err := range errs {
				a.logger.Error("taking the app's changes", zap.String("app", name), zap.Error(err))
			}
			break
		}
		pending = retry
	}
	if a.ApplyEgressRules && a.started.Load() {
		a.scheduleEgressRules()
	}
}

// liveOf returns what routing needs of an app's state: its addresses
// (while they are in a pool of this config: an address a reload took out
// of the pools routes nowhere), host names and machines. The caller holds the store's read lock.
func (a *App) liveOf(as *appState) *routing.LiveApp {
	if as == nil {
		return nil
	}
	l := &routing.LiveApp{Config: as.def}
	for addr, v := range as.ips {
		switch {
		case v.Type != TypeSharedV4 && a.pools.dedicated(addr):
			l.Dedicated = append(l.Dedicated, addr)
		case v.Type == TypeSharedV4 && a.pools.shared[addr]:
			l.Shared = append(l.Shared, addr)
		}
	}
	for host := range as.certs {
		l.Hostnames = append(l.Hostnames, host)
	}
	for _, m := range as.machines {
		l.Machines = append(l.Machines, m)
	}
	return l
}

// known refuses, inside a change, an app that is neither the config's
// nor created through the API in st: new addresses, host names, machines
// and egress pairs are for apps the edge serves. It reads the store's
// state, not routing's, which learns of a change only after it is
// stored: an app destroyed earlier in the same batch is gone.
func (a *App) known(st *state, app string) error {
	if a.fly.AppSource(app) == routing.SourceConfig {
		return nil
	}
	if as := st.apps[app]; as != nil && as.def != nil {
		return nil
	}
	return notFound("unknown app %q", app)
}

// refusal gives routing's refusal of a change its kind: a port the edge
// does not serve or a bad field is invalid input (ErrInvalid), a name or
// machine ID another app has is a conflict (ErrConflict).
func refusal(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, routing.ErrAppDefined), errors.Is(err, routing.ErrHostTaken), errors.Is(err, routing.ErrMachineTaken):
		return conflict("%v", err)
	}
	return invalid("%v", err)
}

// checkHeld refuses an app that is neither in the config nor holds
// anything in the store. An app that left the config keeps what it held
// (addresses, host names, machines, egress pairs), which routes nowhere,
// until it is released: it can be listed and released.
func (a *App) checkHeld(app string) error {
	if a.fly.HasApp(app) {
		return nil
	}
	held := false
	a.store.read(func(st *state) {
		as := st.apps[app]
		held = as != nil && len(as.ips)+len(as.certs)+len(as.machines)+len(as.egress) > 0
	})
	if !held {
		return notFound("unknown app %q", app)
	}
	return nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
