package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
)

// client talks to the admin API for one command.
type client struct {
	address, config, adapter string
	app                      string
	jsonOut                  bool
	out                      io.Writer
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
