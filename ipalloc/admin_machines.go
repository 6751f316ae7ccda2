package ipalloc

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"

	"github.com/flyedge/caddy-flyedge/routing"
)

// The admin API of machines: /fly/apps/{app}/machines.

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
			return invalid("id: %q in the body does not match %q in the path", m.ID, id)
		}
		created, err := api.app.PutMachine(r.Context(), app, &m, false)
		return reply(w, createdOr(created), m, err)
	case http.MethodDelete:
		return reply(w, http.StatusNoContent, nil, api.app.RemoveMachine(r.Context(), app, id))
	}
	return methods(r, http.MethodGet, http.MethodPut, http.MethodDelete)
}

// newMachineID returns a random machine ID in Fly's form.
func newMachineID() string {
	var b [7]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
