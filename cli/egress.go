package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/flyedge/caddy-flyedge/ipalloc"
	"github.com/flyedge/caddy-flyedge/routing"
)

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
