package ipalloc

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestDeployKeepsOrg: a deploy (PUT of a fly.toml, which has no org)
// keeps the org the app was created with; a JSON PUT still sets the
// whole definition, org included.
func TestDeployKeepsOrg(t *testing.T) {
	a := newNode(t, newFly(t, 1), t.TempDir(), testPools)
	api := &adminAPI{app: a}
	put := func(contentType, body string, status int) {
		t.Helper()
		r := httptest.NewRequest(http.MethodPut, "/fly/apps/web", strings.NewReader(body))
		r.SetPathValue("app", "web")
		r.Header.Set("Content-Type", contentType)
		w := httptest.NewRecorder()
		if err := api.handle(api.appDef).ServeHTTP(w, r); err != nil || w.Code != status {
			t.Fatalf("PUT %s %s: %d %v, want %d", contentType, body, w.Code, err, status)
		}
	}
	org := func() string {
		t.Helper()
		def, _, err := a.GetApp("web")
		if err != nil {
			t.Fatal(err)
		}
		var v struct{ Org string }
		if err := json.Unmarshal(def, &v); err != nil {
			t.Fatal(err)
		}
		for _, info := range a.Apps() {
			if info.Name == "web" && info.Org != v.Org {
				t.Errorf("GET /fly/apps says org %q, GET /fly/apps/web %q", info.Org, v.Org)
			}
		}
		return v.Org
	}
	// caddy fly apps create web --org victim
	put("application/json", `{"org":"victim"}`, http.StatusCreated)
	// caddy fly deploy
	toml := "app = 'web'\n\n[http_service]\n  internal_port = 8080\n"
	put("application/toml", toml, http.StatusOK)
	if got := org(); got != "victim" {
		t.Errorf("after a deploy the app's org is %q, want victim (a fly.toml has no org)", got)
	}
	if !a.fly.SameOrg("web", "web") || a.fly.AppConfig("web").Org != "victim" {
		t.Errorf("routing has org %q after the deploy", a.fly.AppConfig("web").Org)
	}
	// an explicit change through a JSON PUT, and its removal
	put("application/json", `{"org":"acme"}`, http.StatusOK)
	if got := org(); got != "acme" {
		t.Errorf("after a PUT with org acme: %q", got)
	}
	put("application/toml", toml, http.StatusOK)
	if got := org(); got != "acme" {
		t.Errorf("after a second deploy: %q, want acme", got)
	}
	put("application/json", `{}`, http.StatusOK)
	if got := org(); got != "" {
		t.Errorf("after a PUT without org: %q, want none (a JSON PUT sets the whole definition)", got)
	}
}
