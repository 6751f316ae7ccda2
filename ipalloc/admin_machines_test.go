package ipalloc

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/flyedge/caddy-flyedge/routing"
)

// TestMachineProcessGroup: a machine registered with a process group is
// stored and listed with it, one registered without it is in the app
// group, and one stored before process groups (no process_group in its
// record) reads as app after a reopen. The app's service, which lists no
// processes, routes to the app group's machines only.
func TestMachineProcessGroup(t *testing.T) {
	dir := t.TempDir()
	fly := newFly(t, 1)
	a := newNode(t, fly, dir, testPools)
	api := &adminAPI{app: a}
	call := func(method, path, body string, status int) []byte {
		t.Helper()
		r := httptest.NewRequest(method, path, strings.NewReader(body))
		r.SetPathValue("app", "app0")
		w := httptest.NewRecorder()
		err := api.handle(api.machines).ServeHTTP(w, r)
		var ae caddy.APIError
		code := w.Code
		if errors.As(err, &ae) {
			code = ae.HTTPStatus
		}
		if code != status {
			t.Fatalf("%s %s %s: %d %v %s, want %d", method, path, body, code, err, w.Body, status)
		}
		return w.Body.Bytes()
	}
	groups := func() map[string]string {
		t.Helper()
		var list []routing.Machine
		if err := json.Unmarshal(call(http.MethodGet, "/fly/apps/app0/machines", "", http.StatusOK), &list); err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, m := range list {
			got[m.ID] = m.ProcessGroup
		}
		return got
	}

	var posted routing.Machine
	body := call(http.MethodPost, "/fly/apps/app0/machines", `{"id":"0000000000aa01","region":"iad","address":"10.1.0.1","process_group":"worker"}`, http.StatusCreated)
	if err := json.Unmarshal(body, &posted); err != nil || posted.ProcessGroup != "worker" {
		t.Fatalf("POST answered %s (%v), want process_group worker", body, err)
	}
	call(http.MethodPost, "/fly/apps/app0/machines", `{"id":"0000000000aa02","region":"iad","address":"10.1.0.2"}`, http.StatusCreated)
	call(http.MethodPost, "/fly/apps/app0/machines", `{"id":"0000000000aa03","region":"iad","address":"10.1.0.3","process_group":"web worker"}`, http.StatusBadRequest)
	// a record as stored before process groups
	err := a.store.do(context.Background(), func(t *txn) error {
		return t.put(machineKey("app0", "0000000000aa04"), map[string]string{"id": "0000000000aa04", "region": "iad", "address": "10.1.0.4"})
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"00000000000000": "app", // the config's, without a group
		"0000000000aa01": "worker",
		"0000000000aa02": "app",
		"0000000000aa04": "app",
	}
	if got := groups(); !mapsEqual(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}

	if _, _, err := a.Allocate(context.Background(), "app0", TypeSharedV4); err != nil {
		t.Fatal(err)
	}
	rt, err := a.fly.Resolve(&net.TCPAddr{IP: net.IPv4(127, 20, 0, 1), Port: 443}, "app0.edge.test")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range rt.NumMachines() {
		ids = append(ids, rt.MachineID(i))
	}
	slices.Sort(ids)
	if want := []string{"00000000000000", "0000000000aa02", "0000000000aa04"}; !slices.Equal(ids, want) {
		t.Errorf("the app group's service routes to %v, want %v (never the worker)", ids, want)
	}

	b := newNode(t, fly, dir, testPools)
	api.app = b
	if got := groups(); !mapsEqual(got, want) {
		t.Fatalf("after a reopen: %v, want %v", got, want)
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
