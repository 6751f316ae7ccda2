package ipalloc

import (
	"net/http"
)

// The admin API of egress pairs: /fly/apps/{app}/machines/{id}/egress-ips
// and /fly/egress-rules.

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

// GET /fly/egress-rules
func (api *adminAPI) egressRules(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return methods(r, http.MethodGet)
	}
	return reply(w, http.StatusOK, api.app.EgressRules(), nil)
}
