package ipalloc

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/flyedge/caddy-flyedge/routing"
)

func init() {
	caddy.RegisterModule(new(adminAPI))
}

// adminAPI serves /fly/ on Caddy's admin endpoint (never on a public
// port): addresses, custom host names, machines and egress pairs.
type adminAPI struct {
	app *App
}

// CaddyModule returns the Caddy module information.
func (*adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.fly",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Provision finds the fly_ips app of the config being loaded; with a fly
// app and no fly_ips block, it runs one without pools (host names,
// machines and egress bookkeeping still work).
func (api *adminAPI) Provision(ctx caddy.Context) error {
	_, errFly := ctx.AppIfConfigured("fly")
	_, errIPs := ctx.AppIfConfigured("fly_ips")
	if errors.Is(errFly, caddy.ErrNotConfigured) && errors.Is(errIPs, caddy.ErrNotConfigured) {
		return nil
	}
	app, err := ctx.App("fly_ips")
	if err != nil {
		return err
	}
	api.app = app.(*App)
	return nil
}

// Routes returns the admin routes: one pattern per resource (methods
// are told apart by the handlers, so 405 is JSON too) and a catch-all
// that answers 404 in JSON.
func (api *adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/fly/ips", Handler: api.handle(api.allIPs)},
		{Pattern: "/fly/apps", Handler: api.handle(api.apps)},
		{Pattern: "/fly/apps/{app}", Handler: api.handle(api.appDef)},
		{Pattern: "/fly/apps/{app}/ips", Handler: api.handle(api.ips)},
		{Pattern: "/fly/apps/{app}/ips/{address}", Handler: api.handle(api.ip)},
		{Pattern: "/fly/apps/{app}/certs", Handler: api.handle(api.certs)},
		{Pattern: "/fly/apps/{app}/certs/{hostname}", Handler: api.handle(api.cert)},
		{Pattern: "/fly/apps/{app}/machines", Handler: api.handle(api.machines)},
		{Pattern: "/fly/apps/{app}/machines/{id}", Handler: api.handle(api.machine)},
		{Pattern: "/fly/apps/{app}/machines/{id}/egress-ips", Handler: api.handle(api.egressIPs)},
		{Pattern: "/fly/apps/{app}/machines/{id}/egress-ips/{address}", Handler: api.handle(api.egressIP)},
		{Pattern: "/fly/egress-rules", Handler: api.handle(api.egressRules)},
		{Pattern: "/fly/", Handler: api.handle(func(_ http.ResponseWriter, r *http.Request) error {
			return apiError(http.StatusNotFound, "no such endpoint: %s", r.URL.Path)
		})},
	}
}

func apiError(status int, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return caddy.APIError{HTTPStatus: status, Err: err, Message: err.Error()}
}

// handle turns the app's errors into JSON answers with their status.
func (api *adminAPI) handle(h caddy.AdminHandlerFunc) caddy.AdminHandler {
	return caddy.AdminHandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if api.app == nil {
			return apiError(http.StatusNotFound, "this Caddy runs no fly app")
		}
		err := h(w, r)
		if err == nil {
			return nil
		}
		var ae caddy.APIError
		if errors.As(err, &ae) {
			return err
		}
		return caddy.APIError{HTTPStatus: statusOf(err), Err: err, Message: err.Error()}
	})
}

// MaxBody bounds the body of an admin API request (an app's
// definition, a machine, ...); the CLI reads files up to it.
const MaxBody = 1 << 20

func createdOr(created bool) int {
	if created {
		return http.StatusCreated
	}
	return http.StatusOK
}

// methods refuses a request whose method is not one of allowed.
func methods(r *http.Request, allowed ...string) error {
	for _, m := range allowed {
		if r.Method == m {
			return nil
		}
	}
	return apiError(http.StatusMethodNotAllowed, "method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allowed, ", "))
}

// decode reads a JSON body of at most MaxBody bytes into v with
// routing.DecodeStrict: one object, keys exact and once each, no nulls,
// nothing after it.
func decode(r *http.Request, v any) error {
	body, err := readBody(r)
	if err != nil {
		return err
	}
	if err := routing.DecodeStrict("", body, v); err != nil {
		if errors.Is(err, io.EOF) {
			return invalid("the request needs a JSON body")
		}
		return invalid("request body: %v", err)
	}
	return nil
}

// readBody reads a request's body, refusing one over MaxBody bytes.
func readBody(r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody+1))
	if err != nil {
		return nil, invalid("reading the request body: %v", err)
	}
	if len(body) > MaxBody {
		return nil, invalid("request body: over %d bytes", MaxBody)
	}
	return body, nil
}

// reply writes v as JSON with status, or err.
func reply(w http.ResponseWriter, status int, v any, err error) error {
	if err != nil {
		return err
	}
	if status == http.StatusNoContent {
		w.WriteHeader(status)
		return nil
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// statusOf returns the HTTP status the admin API answers err with: 400,
// 404, 409 and 503 for the kinds of refusal, 500 for anything else.
// This is the one place a domain error becomes a status code.
func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// Interface guards
var (
	_ caddy.AdminRouter = (*adminAPI)(nil)
	_ caddy.Provisioner = (*adminAPI)(nil)
)
