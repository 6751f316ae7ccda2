package routing

import (
	"slices"
	"strings"
	"testing"
)

// groupsApp is an edge in iad with an app of three process groups: web
// (lhr, ord), worker (iad: the nearest machine of all) and app (fra,
// a machine without a group). Port 443 serves web, port 5432 the default
// group, port 9000 a group without machines.
func groupsApp(t *testing.T) *App {
	t.Helper()
	a := &App{
		Region:     "iad",
		BaseDomain: "edge.test",
		Apps: map[string]*Application{
			"shop": {
				Services: []*Service{
					{InternalPort: 8080, Processes: []string{"web"}, Ports: []*Port{{Port: 443, Handlers: []string{"tls", "http"}}}},
					{InternalPort: 5432, Ports: []*Port{{Port: 5432}}},
					{InternalPort: 9000, Processes: []string{"cron"}, Ports: []*Port{{Port: 9000}}},
				},
				Machines: []*Machine{
					{ID: "0000000000000a", Region: "lhr", Address: "10.0.0.1", ProcessGroup: "web"},
					{ID: "0000000000000b", Region: "ord", Address: "10.0.0.2", ProcessGroup: "web"},
					{ID: "0000000000000c", Region: "iad", Address: "10.0.0.3", ProcessGroup: "worker"},
					{ID: "0000000000000d", Region: "fra", Address: "10.0.0.4"},
				},
			},
		},
	}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	return a
}

func machineIDs(rt *Route) []string {
	var ids []string
	for i := range rt.NumMachines() {
		ids = append(ids, rt.MachineID(i))
	}
	slices.Sort(ids)
	return ids
}

// TestProcessGroups: a service routes only to the machines of its process
// groups; a worker machine never gets web traffic, even when it is the
// nearest, forced or preferred.
func TestProcessGroups(t *testing.T) {
	a := groupsApp(t)
	web, err := routeFor(a, "shop.edge.test", 443)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("web service has the web machines only", func(t *testing.T) {
		if got, want := machineIDs(web), []string{"0000000000000a", "0000000000000b"}; !slices.Equal(got, want) {
			t.Fatalf("machines %v, want %v", got, want)
		}
		for range 50 {
			i, outcome := Select(web, pool{}, Preference{})
			if outcome != Chosen || i < 0 || web.MachineID(i) != "0000000000000b" { // ord is nearer iad than lhr
				t.Fatalf("chose %d (outcome %d), want the ord web machine", i, outcome)
			}
		}
	})
	t.Run("a forced worker machine is no machine of the web service", func(t *testing.T) {
		if i, outcome := Select(web, pool{}, Preference{ForceInstance: "0000000000000c"}); i != -1 || outcome != ForcedUnknown {
			t.Fatalf("chose %d, outcome %d; want ForcedUnknown", i, outcome)
		}
	})
	t.Run("a preferred worker machine is passed over", func(t *testing.T) {
		i, outcome := Select(web, pool{}, Preference{PreferInstance: "0000000000000c"})
		if outcome != PreferredUnavailable || i < 0 || web.MachineID(i) == "0000000000000c" {
			t.Fatalf("chose %d, outcome %d; want a web machine and PreferredUnavailable", i, outcome)
		}
	})
	t.Run("a service without processes has the default group", func(t *testing.T) {
		rt, err := routeFor(a, "shop.edge.test", 5432)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := machineIDs(rt), []string{"0000000000000d"}; !slices.Equal(got, want) {
			t.Fatalf("machines %v, want %v", got, want)
		}
	})
	t.Run("a group without machines is a service without machines", func(t *testing.T) {
		rt, err := routeFor(a, "shop.edge.test", 9000)
		if err != nil {
			t.Fatal(err)
		}
		if i, outcome := Select(rt, pool{}, Preference{}); i != -1 || outcome != NoneAvailable {
			t.Fatalf("chose %d, outcome %d; want NoneAvailable", i, outcome)
		}
	})
	t.Run("machines registered at run time keep to their group", func(t *testing.T) {
		live := []*Machine{
			{ID: "000000000000e1", Region: "iad", Address: "10.0.1.1", ProcessGroup: "worker"},
			{ID: "000000000000e2", Region: "iad", Address: "10.0.1.2", ProcessGroup: "cron"},
			{ID: "000000000000e3", Region: "iad", Address: "10.0.1.3", ProcessGroup: "app"},
		}
		if err := a.SetMachines("shop", live); err != nil {
			t.Fatal(err)
		}
		for port, want := range map[int][]string{
			443:  {"0000000000000a", "0000000000000b"},
			5432: {"0000000000000d", "000000000000e3"},
			9000: {"000000000000e2"},
		} {
			rt, err := routeFor(a, "shop.edge.test", port)
			if err != nil {
				t.Fatal(err)
			}
			if got := machineIDs(rt); !slices.Equal(got, want) {
				t.Errorf("port %d: machines %v, want %v", port, got, want)
			}
		}
	})
}

func TestProcessGroupNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		app  *Application
		want string
	}{
		{"machine", &Application{Machines: []*Machine{{ID: "00000000000001", Region: "iad", Address: "10.0.0.1", ProcessGroup: "web server"}}},
			`apps.a.machines[0].process_group: "web server" (machine 00000000000001) is not a process group name`},
		{"service", &Application{Services: []*Service{{InternalPort: 80, Processes: []string{"web", ""}, Ports: []*Port{{Port: 80}}}}},
			`apps.a.services[0].processes[1]: "" is not a process group name`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := provision(t, &App{Apps: map[string]*Application{"a": tc.app}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
