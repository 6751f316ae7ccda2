package ipalloc

import (
	"errors"
	"fmt"
	"net/netip"
)

// Kinds of refusal. Every refusal of a change or a lookup is one of
// them, found with errors.Is (errors.Is(err, ErrNotFound)); the admin
// API answers each with its HTTP status (statusOf in admin.go), and
// nothing below it knows HTTP.
var (
	ErrInvalid     = errors.New("invalid")     // the input is malformed or not allowed
	ErrNotFound    = errors.New("not found")   // unknown app, address, host name or machine
	ErrConflict    = errors.New("conflict")    // held by another app, pool exhausted, name taken
	ErrUnavailable = errors.New("unavailable") // the storage cannot be reached: nothing changed
)

// Error is a refusal of a change or a lookup: what it says, and its
// kind, one of the Err values above, which it unwraps to.
type Error struct {
	Kind error
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

// Unwrap returns the kind, so that errors.Is(err, ErrConflict) holds
// for a conflict however deep it is wrapped.
func (e *Error) Unwrap() error { return e.Kind }

func invalid(format string, args ...any) error {
	return &Error{ErrInvalid, fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &Error{ErrNotFound, fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &Error{ErrConflict, fmt.Sprintf(format, args...)}
}

func unavailable(format string, args ...any) error {
	return &Error{ErrUnavailable, "the state's storage is unavailable; nothing changed: " + fmt.Sprintf(format, args...)}
}

// parseAddress parses an edge address given in a request; a zone
// (fe80::1%eth0) is no part of one.
func parseAddress(address string) (netip.Addr, error) {
	addr, err := netip.ParseAddr(address)
	if err != nil {
		return netip.Addr{}, invalid("%q is not an IP address", address)
	}
	if addr.Zone() != "" {
		return netip.Addr{}, invalid("%q: an edge address has no zone", address)
	}
	return addr, nil
}
