// Package cli registers the `caddy fly …` subcommands: apps, deploy,
// ips, certs, machine and machine egress-ip, each a client of the admin
// API (admin.api.fly) of a running flyedge, with flags like flyctl's.
package cli

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/flyedge/caddy-flyedge/flytoml"
	"github.com/flyedge/caddy-flyedge/ipalloc"
	"github.com/flyedge/caddy-flyedge/routing"
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

// client talks to the admin API for one command.
type client struct {
	address, config, adapter string
	app                      string
	jsonOut                  bool
	out                      io.Writer
}

func flyCommand(cmd *cobra.Command) {
	c := &client{out: os.Stdout}
	pf := cmd.PersistentFlags()
	pf.StringVar(&c.address, "address", "", "The address of the admin API endpoint")
	pf.StringVarP(&c.config, "config", "c", "", "Configuration file to find the admin address in")
	pf.StringVar(&c.adapter, "adapter", "", "Name of config adapter to apply")
	pf.StringVarP(&c.app, "app", "a", "", "Application name")
	pf.BoolVarP(&c.jsonOut, "json", "j", false, "Print the API's JSON")

	ips := &cobra.Command{Use: "ips", Short: "Manage the app's addresses"}
	ips.AddCommand(
		&cobra.Command{Use: "list", Short: "List the app's addresses (every app's without -a)", Args: cobra.NoArgs,
			RunE: func(*cobra.Command, []string) error {
				path := "/fly/ips"
				if c.app != "" {
					path = c.appPath("ips")
				}
				var out []ipalloc.Assignment
				if err := c.call(http.MethodGet, path, nil, &out); err != nil {
					return err
				}
				return c.print(out, func(w io.Writer) {
					fmt.Fprintln(w, "VERSION\tIP\tTYPE\tREGION\tAPP\tCREATED AT")
					for _, a := range out {
						version, kind := describe(a)
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", version, a.Address, kind, a.Region, a.App, a.CreatedAt.Format(time.RFC3339))
					}
				})
			}},
		&cobra.Command{Use: "allocate-v6", Short: "Allocate a dedicated IPv6 address", Args: cobra.NoArgs,
			RunE: func(*cobra.Command, []string) error { return c.allocate(ipalloc.TypeV6) }},
		c.allocateV4(),
		&cobra.Command{Use: "release <address>", Short: "Release an address of the app", Args: cobra.ExactArgs(1),
			RunE: func(_ *cobra.Command, args []string) error {
				return c.remove(c.appPath("ips", args[0]), "Released %s from %s\n", args[0])
			}},
	)

	certs := &cobra.Command{Use: "certs", Short: "Manage the app's custom host names"}
	certs.AddCommand(
		&cobra.Command{Use: "list", Short: "List the app's custom host names", Args: cobra.NoArgs,
			RunE: func(*cobra.Command, []string) error {
				var out []ipalloc.Cert
				if err := c.call(http.MethodGet, c.appPath("certs"), nil, &out); err != nil {
					return err
				}
				return c.print(out, func(w io.Writer) {
					fmt.Fprintln(w, "HOST NAME\tADDED")
					for _, ce := range out {
						fmt.Fprintf(w, "%s\t%s\n", ce.Hostname, ce.CreatedAt.Format(time.RFC3339))
					}
				})
			}},
		&cobra.Command{Use: "add <hostname>", Short: "Make the app answer to a host name (and get certificates for it)", Args: cobra.ExactArgs(1),
			RunE: func(_ *cobra.Command, args []string) error {
				var out ipalloc.Cert
				if err := c.call(http.MethodPost, c.appPath("certs"), map[string]string{"hostname": args[0]}, &out); err != nil {
					return err
				}
				return c.print(out, func(w io.Writer) { fmt.Fprintf(w, "%s now answers to %s\n", out.App, out.Hostname) })
			}},
		&cobra.Command{Use: "remove <hostname>", Short: "Remove a custom host name of the app", Args: cobra.ExactArgs(1),
			RunE: func(_ *cobra.Command, args []string) error {
				return c.remove(c.appPath("certs", args[0]), "Removed %s from %s\n", args[0])
			}},
	)

	machine := &cobra.Command{Use: "machine", Aliases: []string{"machines", "m"}, Short: "Manage the app's machines"}
	machine.AddCommand(
		&cobra.Command{Use: "list", Short: "List the app's machines", Args: cobra.NoArgs,
			RunE: func(*cobra.Command, []string) error {
				var out []routing.Machine
				if err := c.call(http.MethodGet, c.appPath("machines"), nil, &out); err != nil {
					return err
				}
				return c.print(out, func(w io.Writer) {
					fmt.Fprintln(w, "ID\tREGION\tADDRESS\tSTATE")
					for _, m := range out {
						state := m.State
						if state == "" {
							state = "started"
						}
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", m.ID, m.Region, m.Address, state)
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
	cmd.AddCommand(c.appsCommand(), c.deployCommand(), ips, certs, machine)
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

func (c *client) appsCommand() *cobra.Command {
	apps := &cobra.Command{Use: "apps", Aliases: []string{"app"}, Short: "Manage the apps of the edge"}
	var from, org string
	create := &cobra.Command{Use: "create [<app>]", Short: "Create an app (with the services of --from, else none yet)", Args: cobra.MaximumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := c.appArg(args); err != nil {
				return err
			}
			def := json.RawMessage(`{}`)
			if from != "" {
				b, err := readFile(from)
				if err != nil {
					return err
				}
				def = b
			}
			if org != "" {
				// the merge below would hide what the edge refuses
				// (null, a key twice): check first, as the edge does
				if err := routing.DecodeStrict(from, def, new(routing.Application)); err != nil {
					return err
				}
				var m map[string]json.RawMessage
				if err := json.Unmarshal(def, &m); err != nil {
					return fmt.Errorf("%s: %w", from, err)
				}
				m["org"], _ = json.Marshal(org)
				def, _ = json.Marshal(m)
			}
			var out json.RawMessage
			if err := c.do(http.MethodPut, c.appPath(), def, map[string]string{"If-None-Match": "*"}, &out); err != nil {
				return err
			}
			return c.print(out, func(w io.Writer) { fmt.Fprintf(w, "New app created: %s\n", c.app) })
		}}
	create.Flags().StringVar(&from, "from", "", "A JSON file with the app's definition (services, org), or - for standard input")
	create.Flags().StringVar(&org, "org", "", "The app's organization (apps of one organization may fly-replay to each other)")
	apps.AddCommand(
		&cobra.Command{Use: "list", Short: "List the apps and where each is defined", Args: cobra.NoArgs,
			RunE: func(*cobra.Command, []string) error {
				var out []ipalloc.AppInfo
				if err := c.call(http.MethodGet, "/fly/apps", nil, &out); err != nil {
					return err
				}
				return c.print(out, func(w io.Writer) {
					fmt.Fprintln(w, "NAME\tSOURCE\tORG\tPORTS")
					for _, a := range out {
						ports := make([]string, len(a.Ports))
						for i, p := range a.Ports {
							ports[i] = strconv.Itoa(p)
						}
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", a.Name, a.Source, a.Org, strings.Join(ports, ","))
					}
				})
			}},
		create,
		&cobra.Command{Use: "destroy [<app>]", Aliases: []string{"delete", "remove"}, Short: "Destroy an app made through the API: release its addresses, host names, machines and egress pairs, close its connections", Args: cobra.MaximumNArgs(1),
			RunE: func(_ *cobra.Command, args []string) error {
				if err := c.appArg(args); err != nil {
					return err
				}
				if err := c.call(http.MethodDelete, c.appPath(), nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(c.out, "Destroyed app %s\n", c.app)
				return nil
			}},
	)
	return apps
}

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
			if err := c.call(http.MethodGet, c.appPath("machines"), nil, &ms); err == nil && len(ms) == 0 {
				note = c.noMachinesNote(ft.PrimaryRegion)
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

// noMachinesNote tells that the app has no machines, so that its
// requests get PR01, and gives the command that registers one.
func (c *client) noMachinesNote(region string) string {
	cmd := "caddy fly machine add -a " + c.app + " --region " + cmp.Or(region, "<region>") + " --machine-address <host or IP>"
	if c.address != "" {
		cmd += " --address " + c.address
	}
	return fmt.Sprintf("App %s has no machines yet: its requests get PR01 (no machine can take the request) until one is registered with\n  %s", c.app, cmd)
}

// appArg takes the app's name from the command's argument, as flyctl's
// apps commands do, or from -a; both must agree.
func (c *client) appArg(args []string) error {
	if len(args) == 0 {
		return nil
	}
	if c.app != "" && c.app != args[0] {
		return fmt.Errorf("two app names: %s and -a %s", args[0], c.app)
	}
	c.app = args[0]
	return nil
}

// readFile reads a file, or standard input for "-".
func readFile(name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(io.LimitReader(os.Stdin, ipalloc.MaxBody+1))
	}
	return os.ReadFile(name)
}

func (c *client) allocateV4() *cobra.Command {
	var shared bool
	cmd := &cobra.Command{Use: "allocate-v4", Short: "Allocate an IPv4 address: dedicated, or --shared", Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if shared {
				return c.allocate(ipalloc.TypeSharedV4)
			}
			return c.allocate(ipalloc.TypeV4)
		}}
	cmd.Flags().BoolVar(&shared, "shared", false, "Allocate a shared IPv4 address (routed by host name)")
	return cmd
}

func (c *client) allocate(typ string) error {
	var out ipalloc.Assignment
	if err := c.call(http.MethodPost, c.appPath("ips"), map[string]string{"type": typ}, &out); err != nil {
		return err
	}
	return c.print(out, func(w io.Writer) {
		fmt.Fprintln(w, "VERSION\tIP\tTYPE\tREGION\tCREATED AT")
		version, kind := describe(out)
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", version, out.Address, kind, out.Region, out.CreatedAt.Format(time.RFC3339))
	})
}

// describe returns an assignment's IP version and kind as flyctl prints
// them.
func describe(a ipalloc.Assignment) (version, kind string) {
	version, kind = "v4", "public (dedicated)"
	switch a.Type {
	case ipalloc.TypeV6:
		version = "v6"
	case ipalloc.TypeSharedV4:
		kind = "public (shared)"
	}
	return version, kind
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
				fmt.Fprintf(w, "Machine %s added to %s (region %s, address %s)\n", out.ID, c.app, out.Region, out.Address)
			})
		}}
	f := cmd.Flags()
	f.StringVar(&m.ID, "id", "", "Machine ID, 14 hexadecimal characters (default: a random one)")
	f.StringVarP(&m.Region, "region", "r", "", "Region code of the machine (required)")
	f.StringVar(&m.Address, "machine-address", "", "Host or IP address the machine is reachable on (required)")
	f.StringVar(&m.State, "state", "", "started or stopped (default started)")
	return cmd
}

func (c *client) egressCommand() *cobra.Command {
	egress := &cobra.Command{Use: "egress-ip", Short: "Manage static egress addresses of machines"}
	egress.AddCommand(
		&cobra.Command{Use: "allocate <machine-id>", Short: "Allocate a static egress pair (IPv4 and IPv6) for a machine", Args: cobra.ExactArgs(1),
			RunE: func(_ *cobra.Command, args []string) error {
				var out ipalloc.EgressIP
				if err := c.call(http.MethodPost, c.appPath("machines", args[0], "egress-ips"), nil, &out); err != nil {
					return err
				}
				return c.print(out, func(w io.Writer) {
					fmt.Fprintf(w, "Machine %s egress: %s, %s\n", out.Machine, out.V4, out.V6)
				})
			}},
		&cobra.Command{Use: "list", Short: "List the egress pairs of the app's machines", Args: cobra.NoArgs,
			RunE: func(*cobra.Command, []string) error {
				out, err := c.egressIPs()
				if err != nil {
					return err
				}
				return c.print(out, func(w io.Writer) {
					fmt.Fprintln(w, "MACHINE\tIPV4\tIPV6\tCREATED AT")
					for _, e := range out {
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", e.Machine, e.V4, e.V6, e.CreatedAt.Format(time.RFC3339))
					}
				})
			}},
		&cobra.Command{Use: "release <address>", Short: "Release the egress pair an address belongs to", Args: cobra.ExactArgs(1),
			RunE: func(_ *cobra.Command, args []string) error {
				out, err := c.egressIPs()
				if err != nil {
					return err
				}
				for _, e := range out {
					if e.V4 == args[0] || e.V6 == args[0] {
						if err := c.call(http.MethodDelete, c.appPath("machines", e.Machine, "egress-ips", args[0]), nil, nil); err != nil {
							return err
						}
						fmt.Fprintf(c.out, "Released egress pair %s, %s of machine %s\n", e.V4, e.V6, e.Machine)
						return nil
					}
				}
				return fmt.Errorf("no machine of app %s has the egress address %s", c.app, args[0])
			}},
		c.egressRulesCommand(),
	)
	return egress
}

// egressRulesCommand prints, or installs with nft, the source-NAT rules
// of every machine with an egress pair (all apps: they share one table).
func (c *client) egressRulesCommand() *cobra.Command {
	var apply bool
	cmd := &cobra.Command{Use: "rules", Short: "Print (or --apply with nft) the nftables rules that make each machine's outbound traffic leave from its egress pair",
		Long: "Print the nftables script that source-NATs each machine's outbound traffic (by its address) to its egress pair, for every app's machines: " +
			"one transaction that replaces the table " + ipalloc.EgressTable + " and nothing else. With --apply, run it with `nft -f -` on this host " +
			"(the host where the machines run, or their router; needs root or CAP_NET_ADMIN).",
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			var out ipalloc.EgressRules
			if err := c.call(http.MethodGet, "/fly/egress-rules", nil, &out); err != nil {
				return err
			}
			for _, s := range out.Skipped {
				fmt.Fprintln(os.Stderr, "skipped:", s)
			}
			if apply {
				if err := ipalloc.ApplyNFT(context.Background(), out.NFT); err != nil {
					return err
				}
				fmt.Fprintf(c.out, "Applied %d egress rules (nftables table %s)\n", len(out.Rules), ipalloc.EgressTable)
				return nil
			}
			if c.jsonOut {
				return c.print(out, nil)
			}
			_, err := io.WriteString(c.out, out.NFT)
			return err
		}}
	cmd.Flags().BoolVar(&apply, "apply", false, "install the rules with nft -f - (one transaction)")
	return cmd
}

// egressIPs lists the egress pairs of every machine of the app.
func (c *client) egressIPs() ([]ipalloc.EgressIP, error) {
	var ms []routing.Machine
	if err := c.call(http.MethodGet, c.appPath("machines"), nil, &ms); err != nil {
		return nil, err
	}
	all := []ipalloc.EgressIP{}
	for _, m := range ms {
		var out []ipalloc.EgressIP
		if err := c.call(http.MethodGet, c.appPath("machines", m.ID, "egress-ips"), nil, &out); err != nil {
			return nil, err
		}
		all = append(all, out...)
	}
	return all, nil
}

// remove sends a DELETE to path and prints done with what and the app.
func (c *client) remove(path, done, what string) error {
	if err := c.call(http.MethodDelete, path, nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(c.out, done, what, c.app)
	return nil
}

func (c *client) appPath(parts ...string) string {
	p := "/fly/apps/" + url.PathEscape(c.app)
	for _, s := range parts {
		p += "/" + url.PathEscape(s)
	}
	return p
}

// print writes v as JSON with --json, else as text.
func (c *client) print(v any, text func(io.Writer)) error {
	if c.jsonOut {
		enc := json.NewEncoder(c.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
	text(tw)
	return tw.Flush()
}

// call sends a request to the admin API and decodes its answer into out;
// an error answer becomes an error with the API's message.
func (c *client) call(method, path string, in, out any) error {
	return c.do(method, path, in, nil, out)
}

// do is call with request headers.
func (c *client) do(method, path string, in any, header map[string]string, out any) error {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = b
	}
	return c.send(method, path, "application/json", body, header, out)
}

// send sends a request with a body of type contentType (none when body
// is nil) to the admin API.
func (c *client) send(method, path, contentType string, in []byte, header map[string]string, out any) error {
	if c.app == "" && strings.HasPrefix(path, "/fly/apps/") {
		return errors.New("an app is needed: -a <app>")
	}
	addr, err := caddycmd.DetermineAdminAPIAddress(c.address, nil, c.config, c.adapter)
	if err != nil {
		return fmt.Errorf("finding the admin address: %w", err)
	}
	na, err := caddy.ParseNetworkAddress(addr)
	if err != nil || na.PortRangeSize() > 1 {
		return fmt.Errorf("invalid admin address %s: %v", addr, err)
	}
	var body io.Reader
	if in != nil {
		body = bytes.NewReader(in)
	}
	origin := "http://" + na.JoinHostPort(0)
	if na.IsUnixNetwork() {
		origin = "http://127.0.0.1"
	}
	req, err := http.NewRequest(method, origin+path, body)
	if err != nil {
		return err
	}
	if !na.IsUnixNetwork() {
		req.Header.Set("Origin", origin)
	}
	if in != nil {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	hc := http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, na.Network, na.JoinHostPort(0))
		},
	}}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("reaching the admin API at %s (is Caddy running?): %w", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 400 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s (HTTP %d)", e.Error, resp.StatusCode)
		}
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if out != nil && len(b) > 0 {
		return json.Unmarshal(b, out)
	}
	return nil
}
