package cli

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/flyedge/caddy-flyedge/ipalloc"
)

// certsCommand is caddy fly certs: the host names the app answers to on
// shared IPv4 (and gets certificates for).
func (c *client) certsCommand() *cobra.Command {
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
	return certs
}
