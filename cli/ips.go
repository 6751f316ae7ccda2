package cli

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/flyedge/caddy-flyedge/ipalloc"
)

// ipsCommand is caddy fly ips: the app's addresses.
func (c *client) ipsCommand() *cobra.Command {
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
	return ips
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
