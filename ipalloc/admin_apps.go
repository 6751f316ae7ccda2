package ipalloc

import (
	"encoding/json"
	"mime"
	"net/http"
	"strings"

	"github.com/flyedge/caddy-flyedge/flytoml"
)

// The admin API of apps: /fly/apps.

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
		body, err := readBody(r)
		if err != nil {
			return err
		}
		if len(strings.TrimSpace(string(body))) == 0 {
			return invalid("the request needs a JSON body")
		}
		// If-None-Match: * creates and never replaces (caddy fly apps create)
		onlyNew := strings.TrimSpace(r.Header.Get("If-None-Match")) == "*"
		put := api.app.PutApp
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "application/toml" {
			put = api.app.DeployApp // a fly.toml has no org: the app keeps its own
			ft, err := flytoml.Parse("fly.toml", body, [2]int{api.app.HTTPPort, api.app.HTTPSPort})
			if err != nil {
				return invalid("%v", err)
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
