package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flyedge/caddy-flyedge/ipalloc"
	"github.com/flyedge/caddy-flyedge/routing"
)

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
