package ipalloc

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Pools are the addresses the edge hands out, as the operator announces
// them. Each entry is an address, a CIDR prefix or a range "first-last".
type Pools struct {
	// Prefixes that dedicated IPv6 addresses come from (Fly: one /128 per
	// app from the edge's announced prefix).
	V6 []string `json:"v6,omitempty"`

	// Shared IPv4 addresses: many apps on each, routed by host name.
	SharedV4 []string `json:"shared_v4,omitempty"`

	// Ranges that dedicated IPv4 addresses come from.
	V4 []string `json:"v4,omitempty"`

	// Ranges that the static egress pairs of machines come from.
	EgressV4 []string `json:"egress_v4,omitempty"`
	EgressV6 []string `json:"egress_v6,omitempty"`
}

// pool is one parsed pool: ranges of addresses handed out in order.
type pool struct {
	name   string // config field, for messages
	ranges []addrRange
}

// addrRange is an inclusive range of addresses of one family.
type addrRange struct{ first, last netip.Addr }

func (r addrRange) contains(a netip.Addr) bool {
	return a.BitLen() == r.first.BitLen() && r.first.Compare(a) <= 0 && a.Compare(r.last) <= 0
}

// pools is the parsed form of Pools.
type pools struct {
	v6, sharedV4, v4, egressV4, egressV6 *pool
	shared                               map[netip.Addr]bool
}

// parse checks and parses the pools: every entry must be valid, of the
// pool's address family, and no two entries (of any pools) may overlap.
func (p *Pools) parse() (*pools, error) {
	out := &pools{shared: make(map[netip.Addr]bool)}
	var all []*pool
	for _, f := range []struct {
		name   string
		list   []string
		v6     bool
		single bool
		dst    **pool
	}{
		{"v6", p.V6, true, false, &out.v6},
		{"shared_v4", p.SharedV4, false, true, &out.sharedV4},
		{"v4", p.V4, false, false, &out.v4},
		{"egress_v4", p.EgressV4, false, false, &out.egressV4},
		{"egress_v6", p.EgressV6, true, false, &out.egressV6},
	} {
		if len(f.list) == 0 {
			continue
		}
		pl := &pool{name: f.name}
		for i, s := range f.list {
			field := fmt.Sprintf("%s[%d]", f.name, i)
			r, err := parseRange(s, f.single)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", field, err)
			}
			if r.first.Is6() != f.v6 {
				want := "IPv4"
				if f.v6 {
					want = "IPv6"
				}
				return nil, fmt.Errorf("%s: %q is not %s", field, s, want)
			}
			pl.ranges = append(pl.ranges, r)
			if f.single {
				out.shared[r.first] = true
			}
		}
		*f.dst = pl
		all = append(all, pl)
	}
	type owned struct {
		r    addrRange
		name string
		s    string
	}
	var ranges []owned
	for _, pl := range all {
		for i, r := range pl.ranges {
			ranges = append(ranges, owned{r, pl.name, fmt.Sprintf("%s[%d]", pl.name, i)})
		}
	}
	slices.SortFunc(ranges, func(a, b owned) int { return a.r.first.Compare(b.r.first) })
	for i := 1; i < len(ranges); i++ {
		a, b := ranges[i-1], ranges[i]
		if a.r.first.BitLen() == b.r.first.BitLen() && b.r.first.Compare(a.r.last) <= 0 {
			return nil, fmt.Errorf("%s (%s-%s) overlaps %s (%s-%s)", b.s, b.r.first, b.r.last, a.s, a.r.first, a.r.last)
		}
	}
	return out, nil
}

// parseRange parses an address, a prefix or "first-last". In a prefix
// the first address (the network, or IPv6's subnet-router anycast) is
// left out, and in an IPv4 prefix of 2 or more host bits the broadcast
// too; a single address is taken as it is.
func parseRange(s string, single bool) (addrRange, error) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" || a.Is4In6() {
			return addrRange{}, fmt.Errorf("%q: use a plain address", s)
		}
		return addrRange{a, a}, nil
	}
	if single {
		return addrRange{}, fmt.Errorf("%q is not an IP address (a shared address is one address)", s)
	}
	if first, last, ok := strings.Cut(s, "-"); ok {
		f, err1 := netip.ParseAddr(strings.TrimSpace(first))
		l, err2 := netip.ParseAddr(strings.TrimSpace(last))
		if err1 != nil || err2 != nil || f.Zone() != "" || l.Zone() != "" {
			return addrRange{}, fmt.Errorf("%q is not a range of two IP addresses", s)
		}
		if f.BitLen() != l.BitLen() || l.Less(f) {
			return addrRange{}, fmt.Errorf("%q: the range must go upwards within one address family", s)
		}
		return addrRange{f, l}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return addrRange{}, fmt.Errorf("%q is neither an address, a prefix nor a range first-last", s)
	}
	if p.Masked() != p {
		return addrRange{}, fmt.Errorf("%q has host bits set (did you mean %s?)", s, p.Masked())
	}
	first := p.Addr()
	last := lastOf(p)
	hostBits := first.BitLen() - p.Bits()
	if hostBits >= 1 {
		first = first.Next()
	}
	if first.Is4() && hostBits >= 2 {
		last = last.Prev()
	}
	return addrRange{first, last}, nil
}

// lastOf returns the last address of prefix p.
func lastOf(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// contains tells whether a is in the pool.
func (p *pool) contains(a netip.Addr) bool {
	if p == nil {
		return false
	}
	for _, r := range p.ranges {
		if r.contains(a) {
			return true
		}
	}
	return false
}

// next returns the free address of the pool at or after the cursor
// (wrapping around once); used tells which addresses are taken.
// Allocation in order makes the common case one map lookup; an exhausted
// pool costs one lookup per address.
func (p *pool) next(cursor netip.Addr, used func(netip.Addr) bool) (netip.Addr, bool) {
	if p == nil {
		return netip.Addr{}, false
	}
	start := 0
	for i, r := range p.ranges {
		if cursor.IsValid() && r.contains(cursor) {
			start = i
			break
		}
	}
	for k := 0; k <= len(p.ranges); k++ {
		r := p.ranges[(start+k)%len(p.ranges)]
		a := r.first
		if k == 0 && cursor.IsValid() && r.contains(cursor) {
			a = cursor
		}
		for ; a.IsValid() && a.Compare(r.last) <= 0; a = a.Next() {
			if !used(a) {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

// dedicated tells whether a is in the v6 or the v4 pool.
func (p *pools) dedicated(a netip.Addr) bool {
	return p.v6 != nil && p.v6.contains(a) || p.v4 != nil && p.v4.contains(a)
}
