package pgtls

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Request codes of the startup phase (PostgreSQL protocol, "Message
// Formats").
const (
	cancelRequestCode = 80877102
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
)

// maxStartupPacket is PostgreSQL's own limit (MAX_STARTUP_PACKET_LENGTH).
const maxStartupPacket = 10000

// maxCancelKey is the longest cancel key protocol 3.2 allows.
const maxCancelKey = 256

type messageKind int

const (
	kindStartup messageKind = iota
	kindSSLRequest
	kindGSSENCRequest
	kindCancel
)

// firstMessage is one message of the startup phase, as the client sent it.
type firstMessage struct {
	kind messageKind
	raw  []byte // the whole message, length included
}

// cancelKey returns the process ID and secret of a CancelRequest.
func (m firstMessage) cancelKey() string { return string(m.raw[8:]) }

// Errors of readFirstMessage; each becomes an ErrorResponse.
var (
	errBadLength   = errors.New("invalid length of startup packet")
	errBadProtocol = errors.New("unsupported frontend protocol")
	errBadPacket   = errors.New("malformed startup packet")
)

// readFirstMessage reads one startup-phase message from r: an SSLRequest,
// a GSSENCRequest, a CancelRequest or a StartupMessage. It reads exactly
// the message's bytes, never more, and refuses lengths PostgreSQL would
// refuse. hdr holds bytes of the message already read (0 to 4).
func readFirstMessage(r io.Reader, hdr []byte) (firstMessage, error) {
	var lenBuf [4]byte
	n := copy(lenBuf[:], hdr)
	if _, err := io.ReadFull(r, lenBuf[n:]); err != nil {
		return firstMessage{}, err
	}
	length := binary.BigEndian.Uint32(lenBuf[:])
	if length < 8 || length > maxStartupPacket {
		return firstMessage{}, fmt.Errorf("%w: %d bytes", errBadLength, length)
	}
	raw := make([]byte, length)
	copy(raw, lenBuf[:])
	if _, err := io.ReadFull(r, raw[4:]); err != nil {
		return firstMessage{}, err
	}
	code := binary.BigEndian.Uint32(raw[4:8])
	switch code {
	case sslRequestCode, gssEncRequestCode:
		if length != 8 {
			return firstMessage{}, fmt.Errorf("%w: %d bytes for an SSL or GSS request", errBadLength, length)
		}
		kind := kindSSLRequest
		if code == gssEncRequestCode {
			kind = kindGSSENCRequest
		}
		return firstMessage{kind: kind, raw: raw}, nil
	case cancelRequestCode:
		if length < 16 || length > 12+maxCancelKey {
			return firstMessage{}, fmt.Errorf("%w: %d bytes for a cancel request", errBadLength, length)
		}
		return firstMessage{kind: kindCancel, raw: raw}, nil
	}
	if major := code >> 16; major != 3 {
		return firstMessage{}, fmt.Errorf("%w %d.%d", errBadProtocol, major, code&0xffff)
	}
	// parameters: name\0value\0 ... \0
	if length < 9 || raw[length-1] != 0 {
		return firstMessage{}, fmt.Errorf("%w: parameters not terminated", errBadPacket)
	}
	return firstMessage{kind: kindStartup, raw: raw}, nil
}
