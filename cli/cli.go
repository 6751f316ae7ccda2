// Package cli registers the `caddy fly …` subcommands: apps, deploy,
// ips, certs, machine and machine egress-ip, each a client of the admin
// API (admin.api.fly) of a running flyedge, with flags like flyctl's.
package cli

import (
	"encoding/json"
	"fmt"
	"os"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "fly",
		Usage: "apps|ips|certs|machine ... -a <app>",
		Short: "Manages the apps, addresses, host names and machines of a running flyedge",
		Long: `
Manages a running Caddy with flyedge through its admin API, the way
flyctl manages apps on Fly.io:

  caddy fly apps list
  caddy fly apps create <app> [--from app.json] [--org <org>]
  caddy fly apps destroy <app>
  caddy fly deploy [-c fly.toml] [-a <app>]
  caddy fly ips list -a <app>
  caddy fly ips allocate-v6 -a <app>
  caddy fly ips allocate-v4 [--shared] -a <app>
  caddy fly ips release <address> -a <app>
  caddy fly certs add|remove <hostname> -a <app>
  caddy fly certs list -a <app>
  caddy fly machine list -a <app>
  caddy fly machine add --region <code> --machine-address <host> [--id <id>] [--state stopped] -a <app>
  caddy fly machine remove <id> -a <app>
  caddy fly machine egress-ip allocate <machine-id> -a <app>
  caddy fly machine egress-ip list -a <app>
  caddy fly machine egress-ip release <address> -a <app>
  caddy fly machine egress-ip rules [--apply]

The admin endpoint is found as 'caddy reload' finds it: --address, else
the admin address of --config, else localhost:2019.`,
		CobraFunc: flyCommand,
	})
}

// flyCommand builds the tree under caddy fly, a file per resource:
// apps.go, deploy.go, ips.go, certs.go, machines.go and egress.go, all
// through the admin API client of client.go.
func flyCommand(cmd *cobra.Command) {
	c := &client{out: os.Stdout}
	pf := cmd.PersistentFlags()
	pf.StringVar(&c.address, "address", "", "The address of the admin API endpoint")
	pf.StringVarP(&c.config, "config", "c", "", "Configuration file to find the admin address in")
	pf.StringVar(&c.adapter, "adapter", "", "Name of config adapter to apply")
	pf.StringVarP(&c.app, "app", "a", "", "Application name")
	pf.BoolVarP(&c.jsonOut, "json", "j", false, "Print the API's JSON")

	cmd.AddCommand(c.appsCommand(), c.deployCommand(), c.ipsCommand(), c.certsCommand(), c.machineCommand())
	c.strict(cmd)
}

// strict makes every command of the tree below cmd fail as a script
// expects: a group without a known subcommand prints its usage and exits
// non-zero, and with --json an error is printed as {"error": "..."}.
func (c *client) strict(cmd *cobra.Command) {
	if cmd.HasSubCommands() {
		cmd.Args = cobra.ArbitraryArgs
		cmd.RunE = func(cc *cobra.Command, args []string) error {
			fmt.Fprint(cc.ErrOrStderr(), cc.UsageString())
			if len(args) == 0 {
				return fmt.Errorf("%s needs a command", cc.CommandPath())
			}
			return fmt.Errorf("unknown command %q for %q", args[0], cc.CommandPath())
		}
		for _, sub := range cmd.Commands() {
			c.strict(sub)
		}
		return
	}
	run := cmd.RunE
	if run == nil {
		return
	}
	cmd.RunE = func(cc *cobra.Command, args []string) error {
		err := run(cc, args)
		if err != nil && c.jsonOut {
			_ = json.NewEncoder(c.out).Encode(map[string]string{"error": err.Error()})
			cc.SilenceErrors = true // the JSON says it; the exit status too
		}
		return err
	}
}
