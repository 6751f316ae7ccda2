package flyhandlers

import (
	"strings"
	"testing"
	"time"
)

// TestRequestID: IDs are 26 Crockford characters and the region, unique,
// and sort by time.
func TestRequestID(t *testing.T) {
	seen := map[string]bool{}
	prev := ""
	start := time.UnixMilli(1796095000000)
	for i := range 10000 {
		id := newRequestID(start.Add(time.Duration(i)*time.Millisecond), "iad")
		ulid, region, ok := strings.Cut(id, "-")
		if !ok || region != "iad" || len(ulid) != 26 || strings.Trim(ulid, crockford) != "" {
			t.Fatalf("%q is not a ULID and the region", id)
		}
		if seen[id] {
			t.Fatalf("%q twice", id)
		}
		seen[id] = true
		if ulid <= prev {
			t.Fatalf("%q sorts before %q, made a millisecond earlier", ulid, prev)
		}
		prev = ulid
	}
	if id := newRequestID(time.UnixMilli(0), "lhr"); !strings.HasPrefix(id, "0000000000") {
		t.Errorf("the epoch gives %q, want the time part zero", id)
	}
}
