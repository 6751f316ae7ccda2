package cli

import (
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flyedge/caddy-flyedge/routing"
)

// machineCommand is caddy fly machine: the app's machines, and their
// egress pairs (egress.go).
func (c *client) machineCommand() *cobra.Command {
	machine := &cobra.Command{Use: "machine", Aliases: []string{"machines", "m"}, Short: "Manage the app's machines"}
	machine.AddCommand(
		&cobra.Command{Use: "list", Short: "List the app's machines", Args: cobra.NoArgs,
			RunE: func(*cobra.Command, []string) error {
				var out []routing.Machine
				if err := c.call(http.MethodGet, c.appPath("machines"), nil, &out); err != nil {
					return err
				}
				return c.print(out, func(w io.Writer) {
					fmt.Fprintln(w, "ID\tREGION\tADDRESS\tSTATE\tPROCESS GROUP")
					for _, m := range out {
						state := m.State
						if state == "" {
							state = "started"
						}
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", m.ID, m.Region, m.Address, state, m.Group())
					}
				})
			}},
		c.machineAdd(),
		&cobra.Command{Use: "remove <id>", Aliases: []string{"rm", "destroy"}, Short: "Deregister a machine", Args: cobra.ExactArgs(1),
			RunE: func(_ *cobra.Command, args []string) error {
				return c.remove(c.appPath("machines", args[0]), "Machine %s removed from %s\n", args[0])
			}},
		c.egressCommand(),
	)
	return machine
}

func (c *client) machineAdd() *cobra.Command {
	var m routing.Machine
	cmd := &cobra.Command{Use: "add", Short: "Register a machine of the app", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			// name the flags, not the API's fields
			var missing []string
			if m.Region == "" {
				missing = append(missing, "--region <code> (the region the machine runs in)")
			}
			if m.Address == "" {
				missing = append(missing, "--machine-address <host or IP> (where the edge reaches the machine)")
			}
			if len(missing) > 0 {
				return fmt.Errorf("machine add needs %s", strings.Join(missing, " and "))
			}
			var out routing.Machine
			if err := c.call(http.MethodPost, c.appPath("machines"), m, &out); err != nil {
				return err
			}
			return c.print(out, func(w io.Writer) {
				fmt.Fprintf(w, "Machine %s added to %s (region %s, address %s, process group %s)\n", out.ID, c.app, out.Region, out.Address, out.Group())
			})
		}}
	f := cmd.Flags()
	f.StringVar(&m.ID, "id", "", "Machine ID, 14 hexadecimal characters (default: a random one)")
	f.StringVarP(&m.Region, "region", "r", "", "Region code of the machine (required)")
	f.StringVar(&m.Address, "machine-address", "", "Host or IP address the machine is reachable on (required)")
	f.StringVar(&m.State, "state", "", "started or stopped (default started)")
	f.StringVar(&m.ProcessGroup, "process-group", "", "Process group the machine runs: it serves the services that list it in processes (default app)")
	return cmd
}
