package edge

import (
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestAdminListen: the admin address is read from the Caddy context's
// config, which Caddy does not export; this fails when a Caddy version
// moves it.
func TestAdminListen(t *testing.T) {
	for _, tc := range []struct {
		admin  *caddy.AdminConfig
		want   string
		wantOK bool
	}{
		{&caddy.AdminConfig{Listen: "127.0.0.1:12019"}, "127.0.0.1:12019", true},
		{&caddy.AdminConfig{}, caddy.DefaultAdminListen, true},
		{&caddy.AdminConfig{Listen: "127.0.0.1:12019", Disabled: true}, "", false},
		{nil, "", false},
	} {
		ctx, err := caddy.ProvisionContext(&caddy.Config{Admin: tc.admin})
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := adminListen(ctx); got != tc.want || ok != tc.wantOK {
			t.Errorf("admin %+v: adminListen = %q, %v; want %q, %v", tc.admin, got, ok, tc.want, tc.wantOK)
		}
	}
	if got, ok := adminListen(caddy.Context{}); ok {
		t.Errorf("a context without config: adminListen = %q, true", got)
	}
}
