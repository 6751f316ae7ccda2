package routing

import (
	"slices"
	"testing"
)

// TestHandlerSets: what each handler list Fly accepts asks of the edge,
// as the edge's dispatch, the matchers and fly_proxy read it.
func TestHandlerSets(t *testing.T) {
	type want struct {
		tls, http, l4, sslRequest bool
		steps                     []string
	}
	cases := map[string]want{
		"[]":                {false, false, true, false, []string{"fly_proxy"}},
		"[tls]":             {true, false, true, false, []string{"fly_tls", "fly_proxy"}},
		"[tls proxy_proto]": {true, false, true, false, []string{"fly_tls", "proxy_proto", "fly_proxy"}},
		"[proxy_proto]":     {false, false, true, false, []string{"proxy_proto", "fly_proxy"}},
		"[pg_tls]":          {false, false, true, true, []string{"pg_tls", "fly_proxy"}},
		"[tls http]":        {true, true, true, false, []string{"fly_tls"}},
		"[http]":            {false, true, false, false, nil},
	}
	sets := HandlerSets()
	if len(sets) != len(cases) {
		t.Fatalf("%d sets, want %d", len(sets), len(cases))
	}
	for _, hs := range sets {
		t.Run(hs.String(), func(t *testing.T) {
			w, ok := cases[hs.String()]
			if !ok {
				t.Fatal("not an accepted list")
			}
			parsed, err := ParseHandlers(hs.List())
			if err != nil || parsed != hs {
				t.Errorf("ParseHandlers(List()) = %v, %v", parsed, err)
			}
			got := want{hs.TerminatesTLS(), hs.ServedByHTTP(), hs.AtLayer4(), hs.SSLRequestFirst(), hs.Steps()}
			if got.tls != w.tls || got.http != w.http || got.l4 != w.l4 || got.sslRequest != w.sslRequest || !slices.Equal(got.steps, w.steps) {
				t.Errorf("got %+v, want %+v", got, w)
			}
		})
	}
	if i := slices.Index(sets, HandlerTLS|HandlerHTTP); i != len(sets)-2 {
		t.Errorf("[tls http] is tried at %d: the sets the HTTP server serves come last", i)
	}
}

// TestHandlersFlyctlOrder: [http tls], the list flyctl writes for the 443
// port of every [http_service] (HTTPService.ToService), is the set
// [tls http]; no other order of an accepted list is taken.
func TestHandlersFlyctlOrder(t *testing.T) {
	hs, err := ParseHandlers([]string{"http", "tls"})
	if err != nil || hs != HandlerTLS|HandlerHTTP || !slices.Equal(hs.List(), []string{"tls", "http"}) {
		t.Errorf("[http tls]: %v (list %v), %v; want the set [tls http]", hs, hs.List(), err)
	}
	for _, l := range [][]string{{"proxy_proto", "tls"}, {"http", "tls", "proxy_proto"}, {"http", "pg_tls"}} {
		if _, err := ParseHandlers(l); err == nil {
			t.Errorf("%v is taken", l)
		}
	}
}
