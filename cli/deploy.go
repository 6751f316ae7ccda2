package cli

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"

	"github.com/spf13/cobra"

	"github.com/flyedge/caddy-flyedge/flytoml"
	"github.com/flyedge/caddy-flyedge/routing"
)

func (c *client) deployCommand() *cobra.Command {
	return &cobra.Command{Use: "deploy", Short: "Create or update an app from its fly.toml (-c, default ./fly.toml)", Args: cobra.NoArgs,
		RunE: func(cc *cobra.Command, _ []string) error {
			// -c names the fly.toml here, as in flyctl; the admin
			// endpoint comes from --address or the default
			file := cmp.Or(c.config, "fly.toml")
			c.config = ""
			data, err := os.ReadFile(file)
			if err != nil {
				return err
			}
			ft, err := flytoml.Parse(file, data, [2]int{80, 443})
			if err != nil {
				return err
			}
			for _, w := range ft.Warnings {
				fmt.Fprintln(cc.ErrOrStderr(), "warning:", w)
			}
			for _, n := range ft.Notes() {
				fmt.Fprintln(cc.ErrOrStderr(), "note:", n)
			}
			if c.app == "" {
				c.app = ft.App
			}
			if c.app == "" {
				return fmt.Errorf("%s has no app name: set app in it, or give -a <app>", file)
			}
			var out json.RawMessage
			if err := c.send(http.MethodPut, c.appPath(), "application/toml", data, nil, &out); err != nil {
				return err
			}
			// an app without machines answers PR01: say so, and how to add one
			var ms []routing.Machine
			var note string
			if err := c.call(http.MethodGet, c.appPath("machines"), nil, &ms); err == nil {
				note = c.noMachinesNote(ft.PrimaryRegion, unservedGroups(ft.Definition.Services, ms))
			}
			if c.jsonOut && note != "" {
				fmt.Fprintln(cc.ErrOrStderr(), note)
			}
			return c.print(out, func(w io.Writer) {
				fmt.Fprintf(w, "Deployed %s from %s (%d services)\n", c.app, file, len(ft.Definition.Services))
				if note != "" {
					fmt.Fprintln(w, note)
				}
			})
		}}
}

// noMachinesNote tells that the app has no machines in the process
// groups its services are served by (groups, from unservedGroups), so
// that their requests get PR01, and gives the command that registers
// one; "" when every group has one.
func (c *client) noMachinesNote(region string, groups []string) string {
	if len(groups) == 0 {
		return ""
	}
	cmd := "caddy fly machine add -a " + c.app + " --region " + cmp.Or(region, "<region>") + " --machine-address <host or IP>"
	if groups[0] != routing.DefaultProcessGroup {
		cmd += " --process-group " + groups[0]
	}
	if c.address != "" {
		cmd += " --address " + c.address
	}
	if len(groups) == 1 && groups[0] == routing.DefaultProcessGroup {
		return fmt.Sprintf("App %s has no machines yet: its requests get PR01 (no machine can take the request) until one is registered with\n  %s", c.app, cmd)
	}
	return fmt.Sprintf("App %s has no machines in process groups %v yet: the requests of their services get PR01 (no machine can take the request) until one is registered with\n  %s", c.app, groups, cmd)
}

// unservedGroups returns the process groups of the services that none
// of machines serves, in the order the services name them; an app
// without services or machines is the app group's.
func unservedGroups(services []*routing.Service, machines []routing.Machine) []string {
	if len(services) == 0 && len(machines) == 0 {
		return []string{routing.DefaultProcessGroup}
	}
	var out []string
	for _, s := range services {
		if slices.ContainsFunc(machines, func(m routing.Machine) bool { return s.Serves(m.Group()) }) {
			continue
		}
		groups := s.Processes
		if len(groups) == 0 {
			groups = []string{routing.DefaultProcessGroup}
		}
		for _, g := range groups {
			if !slices.Contains(out, g) {
				out = append(out, g)
			}
		}
	}
	return out
}
