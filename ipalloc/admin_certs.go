package ipalloc

import (
	"net/http"
)

// The admin API of host names: /fly/apps/{app}/certs.

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
