// What an app or machine added at run time must pass: the edge ports it
// may use, a machine ID no other app holds, and ParseApp and CheckApp for
// an app created through the admin API.

package routing

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
)

// ServePorts tells the registry which edge ports the edge listens on
// for TCP and for UDP (serves; list names them in messages): CheckApp
// refuses an app with a service on any other port. Without it, every
// port is taken.
func (a *App) ServePorts(serves, servesUDP func(port int) bool, list string) error {
	a.reg.change.Lock()
	defer a.reg.change.Unlock()
	if a.serves != nil {
		return fmt.Errorf("the edge's ports are set twice (%s; %s): one edge per config, set in the fly_edge app", a.servesList, list)
	}
	a.serves, a.servesUDP, a.servesList = serves, servesUDP, list
	return nil
}

// CheckPorts returns an error naming the first service port of cfg (app
// name) that the edge does not listen on, or nil.
func (a *App) CheckPorts(name string, cfg *Application) error {
	if a.serves == nil {
		return nil
	}
	for si, s := range cfg.Services {
		serves, proto := a.serves, ""
		if s.Protocol == "udp" {
			serves, proto = a.servesUDP, "udp "
		}
		for pi, p := range s.Ports {
			if !serves(p.Port) {
				return fmt.Errorf("apps.%s.services[%d].ports[%d].port: %s%d is %w (%s)", name, si, pi, proto, p.Port, ErrPortNotServed, a.servesList)
			}
		}
	}
	return nil
}

// CheckMachine tells whether SetLive would take m as a machine of app
// as far as the config decides: its fields are valid (its region in this
// edge's catalog) and its ID is not one of the config's machines. The
// caller (the fly_ips store, inside the change) checks that no other app
// registered the ID at run time, and that app exists.
func (a *App) CheckMachine(app string, m *Machine) error {
	if err := m.validate("machine", a.catalog); err != nil {
		return err
	}
	switch owner, ok := a.reg.configMachines[m.ID]; {
	case !ok:
		return nil
	case owner == app:
		return fmt.Errorf("%w: machine %s of app %s is defined in the config; change it there", ErrMachineTaken, m.ID, app)
	default:
		return fmt.Errorf("%w: machine %s belongs to app %s in the config", ErrMachineTaken, m.ID, owner)
	}
}

// checkTaken refuses a machine ID that the config or another app uses;
// live are app's run-time machines, whose IDs it may register again.
// The caller holds reg.mu or reg.change.
func (reg *registry) checkTaken(app, id string, live []*Machine) error {
	other, ok := reg.machines[id]
	if !ok || other == app && slices.ContainsFunc(live, func(o *Machine) bool { return o.ID == id }) {
		return nil
	}
	return fmt.Errorf("%w: machine %s belongs to app %s", ErrMachineTaken, id, other)
}

// ParseApp reads an app created through the admin API: the config's JSON
// shape without machines (they are registered under
// /fly/apps/{app}/machines) and without host names (added through the
// certs API, which checks who may claim them). The body is decoded with
// DecodeStrict: one object, exact keys, each once, no nulls, nothing
// after it. Errors name the field. The result is checked and parsed, and
// must not be changed afterwards: the edge routes with it as it is.
func ParseApp(name string, data []byte) (*Application, error) {
	return parseApp(name, data, true)
}

// ParseStoredApp is ParseApp for an app as the store keeps it: the JSON
// of a ParseApp result. It skips DecodeStrict's pass over the tokens,
// which that JSON passes by construction and which would make reading a
// store of 100,000 apps seconds slower (it takes about four times as
// long as the decoding); the fields are checked the same.
func ParseStoredApp(name string, data []byte) (*Application, error) {
	return parseApp(name, data, false)
}

func parseApp(name string, data []byte, strict bool) (*Application, error) {
	if !appNameRE.MatchString(name) {
		return nil, fmt.Errorf("name: %q must be a DNS label of at most 63 characters (lower-case letters, digits and '-')", name)
	}
	cfg := new(Application)
	if strict {
		if err := DecodeStrict("apps."+name, data, cfg); err != nil {
			return nil, err
		}
	} else {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(cfg); err != nil {
			return nil, fmt.Errorf("apps.%s: %w", name, err)
		}
	}
	if len(cfg.Machines) > 0 {
		return nil, fmt.Errorf("apps.%s.machines: register machines under /fly/apps/%s/machines, not in the app", name, name)
	}
	if len(cfg.Hostnames) > 0 {
		return nil, fmt.Errorf("apps.%s.hostnames: add host names through /fly/apps/%s/certs, not in the app", name, name)
	}
	if err := cfg.validate(name, nil); err != nil {
		return nil, err
	}
	if strict {
		if err := cfg.checkInput(name); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

// CheckApp tells whether cfg (from ParseApp) could be created or set as
// app through the admin API on this edge: its services use the edge's
// ports only, the config has no app of that name, and no other app
// answers to <app>.<base_domain>.
func (a *App) CheckApp(app string, cfg *Application) error {
	reg := a.reg
	reg.change.Lock() // a.serves
	defer reg.change.Unlock()
	if err := a.CheckPorts(app, cfg); err != nil {
		return err
	}
	return a.checkAppLocked(app)
}

// checkAppLocked is CheckApp; the caller holds reg.mu or reg.change.
func (a *App) checkAppLocked(app string) error {
	reg := a.reg
	if slot := reg.apps[app]; slot != nil && slot.load().source == SourceConfig {
		return fmt.Errorf("%w: app %s; change or remove it in the config", ErrAppDefined, app)
	}
	host := app + "." + a.BaseDomain
	switch m := reg.hostApp(host); {
	case m.app == "" || m.app == app || m.wildcard: // a wildcard yields to the name itself
		return nil
	case m.live:
		return fmt.Errorf("%w: app %s added %s through the certs API", ErrHostTaken, m.app, host)
	default:
		return fmt.Errorf("%w: app %s answers to %s already", ErrHostTaken, m.app, host)
	}
}
