package flytoml

import (
	"fmt"
	"slices"

	"github.com/flyedge/caddy-flyedge/routing"
)

// Process groups: [processes] names the app's groups (group = command;
// the command is the machines', not the edge's), and a service's
// processes list says whose machines serve it. A service without one
// gets the app's default group, as flyctl gives it (its Flatten): app
// when [processes] is absent or has app, else the first group name in
// lexicographic order.

// processGroups reads the top-level processes key into w.groups: a table
// of groups, or the empty list older flyctl versions wrote
// (processes = []), which is no groups.
func (w *tomlWalker) processGroups(doc map[string]any) {
	v, ok := doc["processes"]
	if !ok {
		return
	}
	switch t := v.(type) {
	case map[string]any:
		for _, name := range sortedKeys(t) {
			key := "processes." + name
			if !routing.ValidProcessGroup(name) {
				w.fail(key, "%q is not a process group name (at most 63 letters, digits, '-' or '_')", name)
				return
			}
			w.str(key, t[name]) // the group's command
			w.groups = append(w.groups, name)
		}
	case []any:
		if len(t) > 0 {
			w.fail("processes", "want a table of process groups ([processes]: group = command)")
		}
	default:
		w.fail("processes", "want a table of process groups ([processes]: group = command)")
	}
}

// serviceProcesses reads a service's processes list.
func (w *tomlWalker) serviceProcesses(key string, v any) []string {
	list := w.strings(key, v)
	for i, g := range list {
		if !routing.ValidProcessGroup(g) {
			w.fail(fmt.Sprintf("%s[%d]", key, i), "%q is not a process group name (at most 63 letters, digits, '-' or '_')", g)
		}
	}
	return list
}

// orDefaultGroup returns groups, or for a service without any the app's
// default group: none (routing's default is app) when that is app.
func (w *tomlWalker) orDefaultGroup(groups []string) []string {
	if len(groups) > 0 || len(w.groups) == 0 || slices.Contains(w.groups, routing.DefaultProcessGroup) {
		return groups
	}
	return []string{w.groups[0]}
}
