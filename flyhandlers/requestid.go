package flyhandlers

import (
	"math/rand/v2"
	"time"
)

// crockford is the alphabet of ULIDs (Crockford's base 32).
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// newRequestID returns an ID for one request in Fly.io's form: a ULID
// (48 bits of milliseconds, then 80 random bits, in Crockford's base 32,
// so IDs sort by time) and the edge's region, "01J9Z3…-iad".
func newRequestID(now time.Time, region string) string {
	ms := uint64(now.UnixMilli())
	hi, lo := rand.Uint64(), rand.Uint64()
	// 128 bits: ms (48) | hi (16 of its bits) | lo (64)
	var b [26]byte
	v := [2]uint64{ms<<16 | hi&0xffff, lo}
	// 26 characters of 5 bits from the 128 bits, the first holding 3
	for i := 25; i >= 0; i-- {
		b[i] = crockford[v[1]&31]
		v[1] = v[1]>>5 | v[0]<<59
		v[0] >>= 5
	}
	return string(b[:]) + "-" + region
}
