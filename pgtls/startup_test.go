package pgtls

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func TestReadFirstMessage(t *testing.T) {
	startup := append(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 0), 196608), "user\x00postgres\x00\x00"...)
	binary.BigEndian.PutUint32(startup, uint32(len(startup)))
	cancel := []byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 7, 1, 2, 3, 4}
	for _, tc := range []struct {
		name string
		in   []byte
		kind messageKind
		err  error
	}{
		{"ssl request", []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}, kindSSLRequest, nil},
		{"gss request", []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30}, kindGSSENCRequest, nil},
		{"cancel", cancel, kindCancel, nil},
		{"startup 3.0", startup, kindStartup, nil},
		{"ssl request with a body", []byte{0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f, 0}, 0, errBadLength},
		{"too long", []byte{0, 0, 0x27, 0x11, 0, 3, 0, 0}, 0, errBadLength},
		{"too short", []byte{0, 0, 0, 7, 0, 3, 0, 0}, 0, errBadLength},
		{"cancel too short", []byte{0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 7}, 0, errBadLength},
		{"protocol 4", []byte{0, 0, 0, 9, 0, 4, 0, 0, 0}, 0, errBadProtocol},
		{"unterminated", []byte{0, 0, 0, 9, 0, 3, 0, 0, 'x'}, 0, errBadPacket},
		{"truncated", []byte{0, 0, 0, 20, 0, 3, 0, 0}, 0, io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := bytes.NewReader(append(tc.in, "next"...))
			m, err := readFirstMessage(r, nil)
			if !errors.Is(err, tc.err) {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if err == nil {
				if m.kind != tc.kind || !bytes.Equal(m.raw, tc.in) {
					t.Fatalf("kind %d raw %x", m.kind, m.raw)
				}
				if rest, _ := io.ReadAll(r); string(rest) != "next" {
					t.Fatalf("read past the message: %q left", rest)
				}
			}
		})
	}
	// the first byte already read
	m, err := readFirstMessage(bytes.NewReader(cancel[1:]), cancel[:1])
	if err != nil || m.kind != kindCancel || m.cancelKey() != string(cancel[8:]) {
		t.Fatalf("with a read-ahead byte: %v %v", m, err)
	}
}

// FuzzReadFirstMessage feeds client bytes to the startup parser: it must
// never panic, never read past the message, and never accept a length
// PostgreSQL refuses.
func FuzzReadFirstMessage(f *testing.F) {
	f.Add([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
	f.Add([]byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 7, 1, 2, 3, 4})
	f.Add([]byte{0, 0, 0, 9, 0, 3, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		m, err := readFirstMessage(r, nil)
		if err != nil {
			return
		}
		if len(m.raw) < 8 || len(m.raw) > maxStartupPacket || int(binary.BigEndian.Uint32(m.raw)) != len(m.raw) {
			t.Fatalf("accepted a %d-byte message", len(m.raw))
		}
		if r.Len() != len(b)-len(m.raw) {
			t.Fatalf("read %d bytes for a %d-byte message", len(b)-r.Len(), len(m.raw))
		}
	})
}

// FuzzKeySniffer feeds server bytes, in chunks, to the BackendKeyData
// follower: it must never panic, and it must find the key of a
// well-formed stream however it is split.
func FuzzKeySniffer(f *testing.F) {
	f.Add([]byte("R\x00\x00\x00\x08\x00\x00\x00\x00K\x00\x00\x00\x0c\x00\x00\x00\x07abcdZ\x00\x00\x00\x05I"), uint8(3))
	f.Add([]byte{'K', 0, 0, 0, 4}, uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, chunk uint8) {
		s := &keySniffer{}
		step := int(chunk%16) + 1
		for i := 0; i < len(b); i += step {
			s.follow(b[i:min(i+step, len(b))])
		}
		if s.keyRecd != "" && (len(s.keyRecd) < 8 || len(s.keyRecd) > 4+maxCancelKey) {
			t.Fatalf("key of %d bytes", len(s.keyRecd))
		}
	})
}

// TestKeySnifferOneKey: a server that sends many BackendKeyData messages
// registers one cancel key, and a session's end forgets only its own.
func TestKeySnifferOneKey(t *testing.T) {
	var msgs []byte
	for i := range 1000 {
		msgs = append(msgs, 'K', 0, 0, 0, 12, 0, 0, 0, byte(i>>8), byte(i), 0, 0, 0, 42)
	}
	msgs = append(msgs, 'Z', 0, 0, 0, 5, 'I')
	a := &keySniffer{session: session{machine: "10.0.0.1:5432", app: "a"}}
	a.follow(msgs)
	cancelKeys.Lock()
	n := 0
	for _, s := range cancelKeys.m {
		if s.app == "a" {
			n++
		}
	}
	cancelKeys.Unlock()
	if n != 1 {
		t.Fatalf("%d keys registered for one session, want 1", n)
	}
	// another session gets the same key: the first one's end leaves it
	b := &keySniffer{session: session{machine: "10.0.0.2:5432", app: "b"}}
	b.follow(msgs[:14])
	forgetCancelKey(a.keyRecd, a.session)
	if s, ok := lookupCancelKey(a.keyRecd); !ok || s.app != "b" {
		t.Errorf("the key of session b: %+v, %t", s, ok)
	}
	forgetCancelKey(b.keyRecd, b.session)
}
