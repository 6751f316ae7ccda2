package flytoml

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/flyedge/caddy-flyedge/routing"
)

// TestFlyTOMLProcesses: [processes] and each service's processes list
// become the service's process groups; a service without one gets the
// app's default group, as flyctl gives it: app when [processes] is
// absent or has app, else the first group name in lexicographic order.
func TestFlyTOMLProcesses(t *testing.T) {
	svc := func(processes string) string {
		return "[[services]]\ninternal_port = 5000\n" + processes + "[[services.ports]]\nport = 5000\n"
	}
	for _, tc := range []struct {
		name, doc string
		want      [][]string // each service's processes: http_service first, then [[services]]
	}{
		{"web and worker", "[processes]\nweb = 'bin/rails server'\nworker = 'bin/jobs'\n[http_service]\ninternal_port = 8080\nprocesses = ['web']\n", [][]string{{"web"}}},
		{"no processes", "[http_service]\ninternal_port = 8080\n" + svc(""), [][]string{nil, nil}},
		{"default is app when defined", "[processes]\nworker = 'x'\napp = 'y'\n[http_service]\ninternal_port = 8080\n", [][]string{nil}},
		{"default is the first group", "[processes]\nworker = 'x'\nweb = 'y'\n[http_service]\ninternal_port = 8080\n" + svc("processes = ['worker']\n"), [][]string{{"web"}, {"worker"}}},
		{"two groups on one service", "[processes]\nweb = 'x'\napi = 'y'\n" + svc("processes = ['web', 'api']\n"), [][]string{{"web", "api"}}},
		{"processes = [] of older flyctl", "processes = []\n" + svc("processes = ['app']\n"), [][]string{{"app"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft, err := Parse("fly.toml", []byte(tc.doc), [2]int{80, 443})
			if err != nil {
				t.Fatal(err)
			}
			checkWarnings(t, ft.Warnings, nil)
			var got [][]string
			for _, s := range ft.Definition.Services {
				got = append(got, s.Processes)
			}
			if !slices.EqualFunc(got, tc.want, slices.Equal) {
				t.Fatalf("processes %q, want %q", got, tc.want)
			}
			def, _ := json.Marshal(ft.Definition)
			if _, err := routing.ParseApp("x", def); err != nil {
				t.Fatalf("the edge refuses it: %v", err)
			}
		})
	}
}

func TestFlyTOMLProcessesErrors(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"bad group name", "[processes]\n'web server' = 'x'\n", `fly.toml:2: processes.web server: "web server" is not a process group name`},
		{"bad service group", "[http_service]\ninternal_port = 80\nprocesses = ['web', 'a.b']\n", `fly.toml:3: http_service.processes[1]: "a.b" is not a process group name`},
		{"a string for the list", "[http_service]\ninternal_port = 80\nprocesses = 'web'\n", "fly.toml:3: http_service.processes: web: want a list of strings"},
		{"processes not a table", "processes = 'web'\n", "fly.toml:1: processes: want a table of process groups"},
		{"a command not a string", "[processes]\nweb = 3\n", "fly.toml:2: processes.web: 3: want a string"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("fly.toml", []byte(tc.doc), [2]int{80, 443})
			var te *Error
			if !errors.As(err, &te) || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("got %v, want it to start with %q", err, tc.want)
			}
		})
	}
}
