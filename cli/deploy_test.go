package cli

import (
	"slices"
	"strings"
	"testing"

	"github.com/flyedge/caddy-flyedge/routing"
)

// TestNoMachinesNote: after a deploy, the note names the process groups
// whose services have no machine, and the command that registers one
// in the first of them.
func TestNoMachinesNote(t *testing.T) {
	web := &routing.Service{InternalPort: 8080, Processes: []string{"web"}}
	plain := &routing.Service{InternalPort: 5000}
	for _, tc := range []struct {
		name     string
		services []*routing.Service
		machines []routing.Machine
		groups   []string
		note     string // a part of the note; "" for none
	}{
		{"no machines", []*routing.Service{plain}, nil, []string{"app"}, "App shop has no machines yet: its requests get PR01"},
		{"no services, no machines", nil, nil, []string{"app"}, "App shop has no machines yet"},
		{"a machine of the app group", []*routing.Service{plain}, []routing.Machine{{ID: "1"}}, nil, ""},
		{"only a worker for a web service", []*routing.Service{web, plain}, []routing.Machine{{ID: "1", ProcessGroup: "worker"}}, []string{"web", "app"},
			"App shop has no machines in process groups [web app] yet: the requests of their services get PR01 (no machine can take the request) until one is registered with\n  caddy fly machine add -a shop --region iad --machine-address <host or IP> --process-group web"},
		{"a web machine", []*routing.Service{web}, []routing.Machine{{ID: "1", ProcessGroup: "web"}}, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			groups := unservedGroups(tc.services, tc.machines)
			if !slices.Equal(groups, tc.groups) {
				t.Fatalf("groups %v, want %v", groups, tc.groups)
			}
			c := &client{app: "shop"}
			note := c.noMachinesNote("iad", groups)
			if tc.note == "" && note != "" || !strings.Contains(note, tc.note) {
				t.Fatalf("note %q, want it to contain %q", note, tc.note)
			}
		})
	}
}
