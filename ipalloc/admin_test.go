package ipalloc

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/flyedge/caddy-flyedge/routing"
)

// TestDecodeStrict: the bodies of the other /fly/ calls (machines, ips,
// certs) follow the rules of an app's body: one JSON object, keys exact
// and once each, nothing after it, at most 1 MiB.
func TestDecodeStrict(t *testing.T) {
	for _, tc := range []struct{ name, body, want string }{
		{"empty", ``, "the request needs a JSON body"},
		{"null", `null`, "request body: null (want an object)"},
		{"trailing brace", `{"id":"0000000000aa01"}}`, "one JSON value expected, more follows"},
		{"key in another case", `{"id":"0000000000aa01","ID":"0000000000aa02"}`, `unknown field "ID" (field names are case-sensitive: did you mean "id"?)`},
		{"duplicate key", `{"region":"iad","region":"lhr"}`, `field "region" appears twice`},
		{"unknown key", `{"kind":"v6"}`, `unknown field "kind"`},
		{"too big", `{"address":"` + strings.Repeat("a", 1<<20) + `"}`, "request body: over 1048576 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m routing.Machine
			err := decode(httptest.NewRequest("POST", "/fly/apps/web/machines", strings.NewReader(tc.body)), &m)
			if statusOf(err) != 400 || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %d %v, want 400 naming %q", statusOf(err), err, tc.want)
			}
		})
	}
	var m routing.Machine
	if err := decode(httptest.NewRequest("POST", "/", strings.NewReader(`{"id":"0000000000aa01","region":"iad"} `)), &m); err != nil || m.ID != "0000000000aa01" {
		t.Errorf("a good body: %v, %+v", err, m)
	}
}
