package ipalloc

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/flyedge/caddy-flyedge/flytoml"
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

// GET /fly/ips
func (api *adminAPI) allIPs(w http.ResponseWriter, r *http.Request) error {
	if err := methods(r, http.MethodGet); err != nil {
		return err
	}
	ips, err := api.app.IPs("")
	return reply(w, http.StatusOK, ips, err)
}

// GET /fly/apps
func (api *adminAPI) apps(w http.ResponseWriter, r *http.Request) error {
	if err := methods(r, http.MethodGet); err != nil {
		return err
	}
	return reply(w, http.StatusOK, api.app.Apps(), nil)
}

// GET, PUT, DELETE /fly/apps/{app}
func (api *adminAPI) appDef(w http.ResponseWriter, r *http.Request) error {
	app := r.PathValue("app")
	switch r.Method {
	case http.MethodGet:
		def, _, err := api.app.GetApp(app)
		if cfg := api.app.fly.AppConfig(app); err == nil && cfg != nil {
			for _, note := range api.app.Notes(app, cfg) {
				w.Header().Add("Fly-Warning", note)
			}
		}
		return reply(w, http.StatusOK, def, err)
	case http.MethodPut:
		body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody+1))
		if err != nil {
			return badRequest("reading the request body: %v", err)
		}
		if len(body) > MaxBody {
			return badRequest("request body: over %d bytes", MaxBody)
		}
		if len(strings.TrimSpace(string(body))) == 0 {
			return badRequest("the request needs a JSON body")
		}
		// If-None-Match: * creates and never replaces (caddy fly apps create)
		onlyNew := strings.TrimSpace(r.Header.Get("If-None-Match")) == "*"
		put := api.app.PutApp
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "application/toml" {
			put = api.app.DeployApp // a fly.toml has no org: the app keeps its own
			ft, err := flytoml.Parse("fly.toml", body, [2]int{api.app.HTTPPort, api.app.HTTPSPort})
			if err != nil {
				return badRequest("%v", err)
			}
			for _, warning := range ft.Warnings {
				w.Header().Add("Fly-Warning", warning.String())
			}
			if body, err = json.Marshal(ft.Definition); err != nil {
				return err
			}
		}
		def, created, err := put(r.Context(), app, body, onlyNew)
		if cfg := api.app.fly.AppConfig(app); err == nil && cfg != nil {
			for _, note := range api.app.Notes(app, cfg) {
				w.Header().Add("Fly-Warning", note)
			}
		}
		return reply(w, createdOr(created), def, err)
	case http.MethodDelete:
		return reply(w, http.StatusNoContent, nil, api.app.DestroyApp(r.Context(), app))
	}
	return methods(r, http.MethodGet, http.MethodPut, http.MethodDelete)
}

// GET /fly/egress-rules
func (api *adminAPI) egressRules(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return methods(r, http.MethodGet)
	}
	return reply(w, http.StatusOK, api.app.EgressRules(), nil)
}

// MaxBody bounds the body of an admin API request (an app's
// definition, a machine, ...); the CLI reads files up to it.
const MaxBody = 1 << 20

// GET, POST /fly/apps/{app}/ips
func (api *adminAPI) ips(w http.ResponseWriter, r *http.Request) error {
	app := r.PathValue("app")
	switch r.Method {
	case http.MethodGet:
		ips, err := api.app.IPs(app)
		return reply(w, http.StatusOK, ips, err)
	case http.MethodPost:
		var body struct {
			Type string `json:"type"`
		}
		if err := decode(r, &body); err != nil {
			return err
		}
		asg, created, err := api.app.Allocate(r.Context(), app, body.Type)
		return reply(w, createdOr(created), asg, err)
	}
	return methods(r, http.MethodGet, http.MethodPost)
}

// DELETE /fly/apps/{app}/ips/{address}
func (api *adminAPI) ip(w http.ResponseWriter, r *http.Request) error {
	if err := methods(r, http.MethodDelete); err != nil {
		return err
	}
	return reply(w, http.StatusNoContent, nil, api.app.Release(r.Context(), r.PathValue("app"), r.PathValue("address")))
}

// GET, POST /fly/apps/{app}/certs
func (api *adminAPI) certs(w http.ResponseWriter, r *http.Request) error {
	app := r.PathValue("app")
	switch r.Method {
	case http.MethodGet:
		certs, err := api.app.Certs(app)
		return reply(w, http.StatusOK, certs, err)
	case http.MethodPost:
		var body struct {
			Hostname string `json:"hostname"`
		}
		if err := decode(r, &body); err != nil {
			return err
		}
		c, created, err := api.app.AddCert(r.Context(), app, body.Hostname)
		return reply(w, createdOr(created), c, err)
	}
	return methods(r, http.MethodGet, http.MethodPost)
}

// DELETE /fly/apps/{app}/certs/{hostname}
func (api *adminAPI) cert(w http.ResponseWriter, r *http.Request) error {
	if err := methods(r, http.MethodDelete); err != nil {
		return err
	}
	return reply(w, http.StatusNoContent, nil, api.app.RemoveCert(r.Context(), r.PathValue("app"), r.PathValue("hostname")))
}

// GET, POST /fly/apps/{app}/machines
func (api *adminAPI) machines(w http.ResponseWriter, r *http.Request) error {
	app := r.PathValue("app")
	switch r.Method {
	case http.MethodGet:
		ms, err := api.app.Machines(app)
		return reply(w, http.StatusOK, ms, err)
	case http.MethodPost:
		var m routing.Machine
		if err := decode(r, &m); err != nil {
			return err
		}
		if m.ID == "" {
			m.ID = newMachineID()
		}
		_, err := api.app.PutMachine(r.Context(), app, &m, true)
		return reply(w, http.StatusCreated, m, err)
	}
	return methods(r, http.MethodGet, http.MethodPost)
}

// GET, PUT, DELETE /fly/apps/{app}/machines/{id}
func (api *adminAPI) machine(w http.ResponseWriter, r *http.Request) error {
	app, id := r.PathValue("app"), r.PathValue("id")
	switch r.Method {
	case http.MethodGet:
		ms, err := api.app.Machines(app)
		if err != nil {
			return err
		}
		for _, m := range ms {
			if m.ID == id {
				return reply(w, http.StatusOK, m, nil)
			}
		}
		return notFound("app %s has no machine %s", app, id)
	case http.MethodPut:
		var m routing.Machine
		if err := decode(r, &m); err != nil {
			return err
		}
		if m.ID == "" {
			m.ID = id
		}
		if m.ID != id {
			return badRequest("id: %q in the body does not match %q in the path", m.ID, id)
		}
		created, err := api.app.PutMachine(r.Context(), app, &m, false)
		return reply(w, createdOr(created), m, err)
	case http.MethodDelete:
		return reply(w, http.StatusNoContent, nil, api.app.RemoveMachine(r.Context(), app, id))
	}
	return methods(r, http.MethodGet, http.MethodPut, http.MethodDelete)
}

// GET, POST /fly/apps/{app}/machines/{id}/egress-ips
func (api *adminAPI) egressIPs(w http.ResponseWriter, r *http.Request) error {
	app, id := r.PathValue("app"), r.PathValue("id")
	switch r.Method {
	case http.MethodGet:
		eips, err := api.app.EgressIPs(app, id)
		return reply(w, http.StatusOK, eips, err)
	case http.MethodPost:
		e, err := api.app.AllocateEgress(r.Context(), app, id)
		return reply(w, http.StatusCreated, e, err)
	}
	return methods(r, http.MethodGet, http.MethodPost)
}

// DELETE /fly/apps/{app}/machines/{id}/egress-ips/{address}
func (api *adminAPI) egressIP(w http.ResponseWriter, r *http.Request) error {
	if err := methods(r, http.MethodDelete); err != nil {
		return err
	}
	return reply(w, http.StatusNoContent, nil, api.app.ReleaseEgress(r.Context(), r.PathValue("app"), r.PathValue("id"), r.PathValue("address")))
}

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
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody+1))
	if err != nil {
		return badRequest("reading the request body: %v", err)
	}
	if len(body) > MaxBody {
		return badRequest("request body: over %d bytes", MaxBody)
	}
	if err := routing.DecodeStrict("", body, v); err != nil {
		if errors.Is(err, io.EOF) {
			return badRequest("the request needs a JSON body")
		}
		return badRequest("request body: %v", err)
	}
	return nil
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

// newMachineID returns a random machine ID in Fly's form.
func newMachineID() string {
	var b [7]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Interface guards
var (
	_ caddy.AdminRouter = (*adminAPI)(nil)
	_ caddy.Provisioner = (*adminAPI)(nil)
)

// statusOf returns the HTTP status the admin API answers err with: 400,
// 404 and 409 for refusals, 500 for anything else.
func statusOf(err error) int {
	switch KindOf(err) {
	case Invalid:
		return http.StatusBadRequest
	case NotFound:
		return http.StatusNotFound
	case Conflict:
		return http.StatusConflict
	case Unavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}
