package ipalloc

import (
	"errors"
	"fmt"
	"net/netip"
)

// Kind is what kind of refusal an Error is; the admin API answers each
// with its HTTP status (see statusOf in admin.go).
type Kind int

// Kinds of refusal.
const (
	Invalid     Kind = iota + 1 // the input is malformed or not allowed
	NotFound                    // unknown app, address, host name or machine
	Conflict                    // held by another app, pool exhausted, name taken
	Unavailable                 // the storage cannot be reached: nothing changed
)

// Error is a refusal of a change or a lookup, with what kind it is.
type Error struct {
	Kind Kind
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

func badRequest(format string, args ...any) error {
	return &Error{Invalid, fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &Error{NotFound, fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &Error{Conflict, fmt.Sprintf(format, args...)}
}

func unavailable(format string, args ...any) error {
	return &Error{Unavailable, "the state's storage is unavailable; nothing changed: " + fmt.Sprintf(format, args...)}
}

// KindOf returns the kind of err, 0 when it is not a refusal (a failure
// of the store, say).
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

// parseAddress parses an edge address given in a request; a zone
// (fe80::1%eth0) is no part of one.
func parseAddress(address string) (netip.Addr, error) {
	addr, err := netip.ParseAddr(address)
	if err != nil {
		return netip.Addr{}, badRequest("%q is not an IP address", address)
	}
	if addr.Zone() != "" {
		return netip.Addr{}, badRequest("%q: an edge address has no zone", address)
	}
	return addr, nil
}
