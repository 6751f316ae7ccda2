package flyhandlers

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestParseReplayHeader(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want replay
		err  string
	}{
		{"region=sjc", replay{Region: "sjc"}, ""},
		{`region="iad,ord,us,na";app=worker`, replay{Region: "iad,ord,us,na", App: "worker"}, ""},
		{"instance=00bb33ff ; state=a=b", replay{Instance: "00bb33ff", State: "a=b"}, ""},
		{"prefer_instance=x;elsewhere=true;fallback=prefer_self;timeout=2s", replay{PreferInstance: "x", Elsewhere: true, Fallback: "prefer_self"}, ""},
		{`state="semi;colon";app=w`, replay{State: "semi;colon", App: "w"}, ""},
		{"APP=w", replay{App: "w"}, ""},
		{"", replay{}, ""},
		{"region", replay{}, "want name=value"},
		{`region="iad`, replay{}, "unterminated quote"},
		{`region="iad"x`, replay{}, "text after the quoted value"},
		{"elsewhere=maybe", replay{}, "elsewhere"},
		{"fallback=sometimes", replay{}, `fallback="sometimes"`},
		{"instance=a;prefer_instance=b", replay{}, "both given"},
	} {
		got, err := parseReplayHeader(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want an error with %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got.App != tc.want.App || got.Region != tc.want.Region || got.Instance != tc.want.Instance ||
			got.PreferInstance != tc.want.PreferInstance || got.State != tc.want.State || got.Elsewhere != tc.want.Elsewhere || got.Fallback != tc.want.Fallback {
			t.Errorf("%q: %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

// FuzzParseReplay: an app's fly-replay answer, header or JSON, is the
// tenant's input: it must never crash the edge, and an accepted one is
// one the edge can carry out.
func FuzzParseReplay(f *testing.F) {
	for _, s := range []string{"region=sjc", `region="iad,ord";app=x;state="a;b"`, "elsewhere=true", `{"app":"w","transform":{"path":"/a","set_headers":[{"name":"X","value":"y"}]}}`, `"`, "=;=", "fallback=force_self"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, parse := range []func() (*replay, error){
			func() (*replay, error) { return parseReplayHeader(s) },
			func() (*replay, error) { return parseReplayJSON([]byte(s)) },
		} {
			rp, err := parse()
			if err != nil {
				continue
			}
			if rp.check() != nil {
				t.Fatalf("%q: accepted an instruction check refuses", s)
			}
		}
	})
}

// TestReplayBody: a replay sends the body again, whatever part of it the
// machine read first; a body over the limit streams through once.
func TestReplayBody(t *testing.T) {
	payload := bytes.Repeat([]byte("abcdefgh"), 1000)
	for _, readFirst := range []int{0, 100, len(payload)} {
		b := newReplayBody(io.NopCloser(bytes.NewReader(payload)))
		first := make([]byte, readFirst)
		io.ReadFull(b, first)
		for pass := range 3 {
			if !b.rewind() {
				t.Fatalf("read %d first, pass %d: cannot rewind", readFirst, pass)
			}
			got, _ := io.ReadAll(b)
			if !bytes.Equal(got, payload) {
				t.Fatalf("read %d first, pass %d: replayed %d bytes that differ", readFirst, pass, len(got))
			}
		}
		b.release()
	}
	big := bytes.Repeat([]byte("x"), replayBodyLimit+1)
	b := newReplayBody(io.NopCloser(bytes.NewReader(big)))
	if got, _ := io.ReadAll(b); len(got) != len(big) {
		t.Fatalf("a large body streamed %d of %d bytes", len(got), len(big))
	}
	if b.rewind() {
		t.Error("a body over the limit was rewound")
	}
}
