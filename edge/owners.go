package edge

import "net/netip"

// ForeignListener is a socket of another process that listens where this
// one means to (ForeignListeners finds them, on Linux).
type ForeignListener struct {
	Addr  netip.AddrPort
	Owner string // "pid 1234: caddy run --config Caddyfile.example", or "" when unknown
}

// Process names the process that holds the socket, for messages:
// "another process (pid 1234: caddy run ...)".
func (f ForeignListener) Process() string {
	if f.Owner == "" {
		return "another process"
	}
	return "another process (" + f.Owner + ")"
}
