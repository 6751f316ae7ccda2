package routing

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestDecodeStrict(t *testing.T) {
	type inner struct {
		Port int            `json:"port"`
		Any  any            `json:"any,omitempty"`
		Map  map[string]int `json:"map,omitempty"`
	}
	type outer struct {
		List  []*inner `json:"list"`
		Name  string   `json:"name,omitempty"`
		Plain int
		skip  int
	}
	for _, tc := range []struct{ body, want string }{
		{`{"list":[{"port":1,"any":null}],"name":"a","Plain":2}`, ""},
		{`{"list":[{"port":1,"any":{"a":[1,{"b":null}]}}]}`, ""},
		{` {"list":[]} ` + "\n", ""},
		{``, "x: EOF"},
		{`   `, "x: EOF"},
		{`null`, "x: null (want an object)"},
		{`"a"`, "x: a string (want an object)"},
		{`{"list":[]}}`, "x: one JSON value expected, more follows"},
		{`{"list":[]}]`, "x: one JSON value expected, more follows"},
		{`{"list":[]}{}`, "x: one JSON value expected, more follows"},
		{`{"list":[]`, "x: unexpected EOF"},
		{`{"list":[{"port":1}`, "x.list: unexpected EOF"},
		{`{"LIST":[]}`, `x: unknown field "LIST" (field names are case-sensitive: did you mean "list"?)`},
		{`{"plain":1}`, `x: unknown field "plain" (field names are case-sensitive: did you mean "Plain"?)`},
		{`{"ſkip":1}`, `x: unknown field "ſkip"`},
		{`{"skip":1}`, `x: unknown field "skip"`},
		{`{"list":[{"port":1,"port":2}]}`, `x.list[0]: field "port" appears twice`},
		{`{"list":[{"port":1,"map":{"a":1,"a":2}}]}`, `x.list[0].map: field "a" appears twice`},
		{`{"list":[{"port":1,"any":{"a":1,"a":2}}]}`, `x.list[0].any: field "a" appears twice`},
		{`{"list":[null]}`, `x.list[0]: null (want an object)`},
		{`{"list":null}`, `x.list: null (want a list)`},
		{`{"name":null}`, `x.name: null (want a string)`},
		{`{"list":[{"port":null}]}`, `x.list[0].port: null (want a number)`},
		{`{"list":[{"any":` + strings.Repeat(`[`, 40) + strings.Repeat(`]`, 40) + `}]}`, `nested deeper than 32 levels`},
		{`{"list":[{"port":"1"}]}`, `x: json: cannot unmarshal string`},
		{`{"list":{}}`, `x: json: cannot unmarshal object`},
		{`{"list":[],}`, `x: invalid character '}'`},
	} {
		var v outer
		err := DecodeStrict("x", []byte(tc.body), &v)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.body, err, tc.want)
		}
	}
}

// FuzzParseApp feeds arbitrary bytes (a tenant's PUT /fly/apps/{app}
// body) to ParseApp: it must never panic, and what it takes is one JSON
// object that it reads back the same from its own JSON.
func FuzzParseApp(f *testing.F) {
	// the seed corpus is in testdata/fuzz/FuzzParseApp
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseApp("fuzz", data)
		if err != nil {
			return
		}
		if !json.Valid(data) || !strings.HasPrefix(strings.TrimLeft(string(data), " \t\r\n"), "{") {
			t.Fatalf("took %q, which is not one JSON object", data)
		}
		out, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseApp("fuzz", out)
		if err != nil {
			t.Fatalf("refused its own JSON %s: %v", out, err)
		}
		if out2, _ := json.Marshal(again); string(out2) != string(out) {
			t.Fatalf("read back differently:\n%s\n%s", out, out2)
		}
	})
}
