package ipalloc

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/flyedge/caddy-flyedge/routing"
)

// Address types, as flyctl names them.
const (
	TypeV6       = "v6"
	TypeSharedV4 = "shared_v4"
	TypeV4       = "v4"
)

// Assignment is an address an app holds.
type Assignment struct {
	Address   string    `json:"address"`
	Type      string    `json:"type"`
	App       string    `json:"app"`
	Region    string    `json:"region"`
	CreatedAt time.Time `json:"created_at"`
}

// Cert is a custom host name of an app: the app answers to it on shared
// IPv4 and gets certificates for it.
type Cert struct {
	Hostname  string    `json:"hostname"`
	App       string    `json:"app"`
	CreatedAt time.Time `json:"created_at"`
}

// EgressIP is the static egress pair of a machine.
type EgressIP struct {
	App       string    `json:"app"`
	Machine   string    `json:"machine"`
	V4        string    `json:"v4"`
	V6        string    `json:"v6"`
	CreatedAt time.Time `json:"created_at"`
}

// The state is a set of records, each stored as JSON under a key:
//
//	ip/<app>/<address>     Assignment
//	cert/<hostname>        Cert
//	machine/<app>/<id>     routing.Machine (registered through the API)
//	egress/<app>/<id>      EgressIP
//	auto/<app>             the app got its automatic addresses
//	app/<app>              routing.Application (created through the API)
//
// Changes are sets of puts and deletes of records (see store.go).
type state struct {
	records map[string]json.RawMessage
	addrs   map[netip.Addr]*holders
	apps    map[string]*appState
	certs   map[string]*Cert
	egress  map[netip.Addr]*EgressIP
	owners  map[string]string // machine ID -> app, for the run-time machines
}

// holders are the apps on one address: one app for a dedicated address,
// any number on a shared one.
type holders struct {
	dedicated *Assignment
	shared    map[string]*Assignment
}

type appState struct {
	ips      map[netip.Addr]*Assignment
	certs    map[string]*Cert
	machines map[string]*routing.Machine
	egress   map[string]*EgressIP // by machine ID
	auto     bool
	def      *routing.Application // the app, when created through the API
	defRaw   json.RawMessage      // def as stored
}

func newState() *state {
	return &state{
		records: make(map[string]json.RawMessage),
		addrs:   make(map[netip.Addr]*holders),
		apps:    make(map[string]*appState),
		certs:   make(map[string]*Cert),
		egress:  make(map[netip.Addr]*EgressIP),
		owners:  make(map[string]string),
	}
}

func (s *state) app(name string) *appState {
	a := s.apps[name]
	if a == nil {
		a = &appState{
			ips:      make(map[netip.Addr]*Assignment),
			certs:    make(map[string]*Cert),
			machines: make(map[string]*routing.Machine),
			egress:   make(map[string]*EgressIP),
		}
		s.apps[name] = a
	}
	return a
}

// used tells whether an address is held by any app or machine.
func (s *state) used(a netip.Addr) bool {
	if h := s.addrs[a]; h != nil && (h.dedicated != nil || len(h.shared) > 0) {
		return true
	}
	return s.egress[a] != nil
}

// apply puts raw under key (nil deletes the key) and updates the
// indexes; changed collects the apps whose addresses, host names or
// machines changed.
func (s *state) apply(key string, raw json.RawMessage, changed map[string]bool) error {
	if old, ok := s.records[key]; ok {
		if err := s.index(key, old, false, changed); err != nil {
			return err
		}
		delete(s.records, key)
	}
	if raw == nil {
		return nil
	}
	if err := s.index(key, raw, true, changed); err != nil {
		return err
	}
	s.records[key] = raw
	return nil
}

// index adds a record to the indexes, or removes it.
func (s *state) index(key string, raw json.RawMessage, add bool, changed map[string]bool) error {
	kind, rest, _ := strings.Cut(key, "/")
	switch kind {
	case "ip":
		var v Assignment
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("record %s: %w", key, err)
		}
		addr, err := netip.ParseAddr(v.Address)
		if err != nil {
			return fmt.Errorf("record %s: %w", key, err)
		}
		h := s.addrs[addr]
		if h == nil {
			h = &holders{}
			s.addrs[addr] = h
		}
		changed[v.App] = true
		ips := s.app(v.App).ips
		if !add {
			delete(ips, addr)
			if v.Type == TypeSharedV4 {
				delete(h.shared, v.App)
			} else {
				h.dedicated = nil
			}
			if h.dedicated == nil && len(h.shared) == 0 {
				delete(s.addrs, addr)
			}
			return nil
		}
		ips[addr] = &v
		if v.Type == TypeSharedV4 {
			if h.shared == nil {
				h.shared = make(map[string]*Assignment)
			}
			h.shared[v.App] = &v
		} else {
			h.dedicated = &v
		}
	case "cert":
		var v Cert
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("record %s: %w", key, err)
		}
		changed[v.App] = true
		if !add {
			delete(s.certs, v.Hostname)
			delete(s.app(v.App).certs, v.Hostname)
			return nil
		}
		s.certs[v.Hostname] = &v
		s.app(v.App).certs[v.Hostname] = &v
	case "machine":
		app, _, _ := strings.Cut(rest, "/")
		var v routing.Machine
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("record %s: %w", key, err)
		}
		changed[app] = true
		if !add {
			delete(s.app(app).machines, v.ID)
			if s.owners[v.ID] == app {
				delete(s.owners, v.ID)
			}
			return nil
		}
		if v.ProcessGroup == "" { // stored before process groups
			v.ProcessGroup = routing.DefaultProcessGroup
		}
		s.app(app).machines[v.ID] = &v
		s.owners[v.ID] = app
	case "egress":
		var v EgressIP
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("record %s: %w", key, err)
		}
		v4, err4 := netip.ParseAddr(v.V4)
		v6, err6 := netip.ParseAddr(v.V6)
		if err4 != nil || err6 != nil {
			return fmt.Errorf("record %s: bad addresses %q, %q", key, v.V4, v.V6)
		}
		changed[v.App] = true // the egress rules follow (apply_egress_rules)
		if !add {
			delete(s.egress, v4)
			delete(s.egress, v6)
			delete(s.app(v.App).egress, v.Machine)
			return nil
		}
		s.egress[v4], s.egress[v6] = &v, &v
		s.app(v.App).egress[v.Machine] = &v
	case "auto":
		s.app(rest).auto = add
	case "app":
		changed[rest] = true
		as := s.app(rest)
		if !add {
			as.def, as.defRaw = nil, nil
			return nil
		}
		def, err := routing.ParseStoredApp(rest, raw)
		if err != nil {
			return fmt.Errorf("record %s: %w", key, err)
		}
		as.def, as.defRaw = def, raw
	default:
		return fmt.Errorf("record %s: unknown kind %q", key, kind)
	}
	return nil
}

func ipKey(app string, a netip.Addr) string { return "ip/" + app + "/" + a.String() }
func certKey(host string) string            { return "cert/" + host }
func machineKey(app, id string) string      { return "machine/" + app + "/" + id }
func egressKey(app, id string) string       { return "egress/" + app + "/" + id }
func autoKey(app string) string             { return "auto/" + app }
func appKey(app string) string              { return "app/" + app }
