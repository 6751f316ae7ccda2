package ipalloc

import (
	"net/netip"
	"strings"
	"testing"
)

func TestPoolsRefuseBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name  string
		pools Pools
		want  string
	}{
		{"garbage", Pools{V4: []string{"127.30.0.0/33"}}, `v4[0]: "127.30.0.0/33" is neither`},
		{"host bits", Pools{V6: []string{"fd00::1/64"}}, `v6[0]: "fd00::1/64" has host bits set (did you mean fd00::/64?)`},
		{"family v6", Pools{V6: []string{"127.0.0.0/8"}}, `v6[0]: "127.0.0.0/8" is not IPv6`},
		{"family v4", Pools{V4: []string{"fd00::/64"}}, `v4[0]: "fd00::/64" is not IPv4`},
		{"shared is one address", Pools{SharedV4: []string{"127.20.0.0/24"}}, `shared_v4[0]: "127.20.0.0/24" is not an IP address`},
		{"backwards range", Pools{V4: []string{"127.30.0.9-127.30.0.1"}}, `v4[0]: "127.30.0.9-127.30.0.1": the range must go upwards`},
		{"overlap within", Pools{V4: []string{"127.30.0.0/24", "127.30.0.128/25"}}, `v4[1] (127.30.0.129-127.30.0.254) overlaps v4[0] (127.30.0.1-127.30.0.254)`},
		{"shared in dedicated", Pools{SharedV4: []string{"127.30.0.7"}, V4: []string{"127.30.0.0/24"}}, `shared_v4[0] (127.30.0.7-127.30.0.7) overlaps v4[0]`},
		{"egress in ingress", Pools{V6: []string{"fd00::/64"}, EgressV6: []string{"fd00::100-fd00::200"}}, `egress_v6[0] (fd00::100-fd00::200) overlaps v6[0]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.pools.parse()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestPoolRanges(t *testing.T) {
	p, err := (&Pools{
		V6:       []string{"fd00:fe::/64"},
		SharedV4: []string{"127.20.0.1", "127.20.0.2"},
		V4:       []string{"127.30.0.0/30", "127.31.0.5-127.31.0.6"},
		EgressV4: []string{"127.40.0.1/32"},
	}).parse()
	if err != nil {
		t.Fatal(err)
	}
	// a /32 is its one address
	none := func(netip.Addr) bool { return false }
	if a, ok := p.egressV4.next(netip.Addr{}, none); !ok || a.String() != "127.40.0.1" {
		t.Errorf("egress_v4 of one /32 hands out %v, %v", a, ok)
	}
	if a, ok := p.egressV4.next(netip.Addr{}, func(netip.Addr) bool { return true }); ok {
		t.Errorf("a full /32 pool hands out %v", a)
	}
	// a /64 starts after its subnet-router anycast address
	if a, _ := p.v6.next(netip.Addr{}, none); a.String() != "fd00:fe::1" {
		t.Errorf("v6 pool starts at %v", a)
	}
	// /30: network and broadcast left out, so .1 and .2; then the range
	used := map[netip.Addr]bool{}
	var got []string
	cur := netip.Addr{}
	for {
		a, ok := p.v4.next(cur, func(a netip.Addr) bool { return used[a] })
		if !ok {
			break
		}
		used[a] = true
		cur = a.Next()
		got = append(got, a.String())
	}
	if want := "127.30.0.1 127.30.0.2 127.31.0.5 127.31.0.6"; strings.Join(got, " ") != want {
		t.Errorf("allocation order %v, want %s", got, want)
	}
	// a released address in the middle is found again, wrapping around
	delete(used, netip.MustParseAddr("127.30.0.2"))
	if a, ok := p.v4.next(cur, func(a netip.Addr) bool { return used[a] }); !ok || a.String() != "127.30.0.2" {
		t.Errorf("after release got %v %v, want 127.30.0.2", a, ok)
	}
	if !p.shared[netip.MustParseAddr("127.20.0.2")] || p.shared[netip.MustParseAddr("127.20.0.3")] {
		t.Error("shared address set is wrong")
	}
}
