package ipalloc

import (
	"net/http"
)

// The admin API of addresses: /fly/ips and /fly/apps/{app}/ips.

// GET /fly/ips
func (api *adminAPI) allIPs(w http.ResponseWriter, r *http.Request) error {
	if err := methods(r, http.MethodGet); err != nil {
		return err
	}
	ips, err := api.app.IPs("")
	return reply(w, http.StatusOK, ips, err)
}

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
