package pgtls

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
)

// cancelKeys maps a session's cancel key (process ID and secret, as in
// BackendKeyData) to the address of the machine that serves it, so a
// CancelRequest reaches that machine. It is shared by every config.
var cancelKeys = struct {
	sync.Mutex
	m map[string]string
}{m: make(map[string]string)}

func registerCancelKey(key, addr string) {
	cancelKeys.Lock()
	cancelKeys.m[key] = addr
	cancelKeys.Unlock()
}

func forgetCancelKey(key string) {
	cancelKeys.Lock()
	delete(cancelKeys.m, key)
	cancelKeys.Unlock()
}

func lookupCancelKey(key string) (string, bool) {
	cancelKeys.Lock()
	defer cancelKeys.Unlock()
	addr, ok := cancelKeys.m[key]
	return addr, ok
}

// keySniffer is the machine connection of one session: it passes the
// server's bytes through untouched while it follows the message framing
// until ReadyForQuery, recording the BackendKeyData on the way.
type keySniffer struct {
	net.Conn
	addr    string // the machine's address, where cancels go
	hdr     [5]byte
	hdrN    int
	bodyN   int    // body bytes left in the current message
	key     []byte // body of BackendKeyData, while it is read
	inKey   bool
	done    bool
	keyRecd string
}

func (s *keySniffer) Read(p []byte) (int, error) {
	n, err := s.Conn.Read(p)
	if !s.done {
		s.follow(p[:n])
	}
	return n, err
}

// follow advances the framing over b.
func (s *keySniffer) follow(b []byte) {
	for len(b) > 0 && !s.done {
		if s.bodyN == 0 && s.hdrN < 5 {
			c := copy(s.hdr[s.hdrN:], b)
			s.hdrN += c
			b = b[c:]
			if s.hdrN < 5 {
				return
			}
			length := int(binary.BigEndian.Uint32(s.hdr[1:5]))
			s.bodyN = length - 4
			s.inKey = s.hdr[0] == 'K'
			s.key = s.key[:0]
			if s.hdr[0] == 'Z' || s.hdr[0] == 'E' || length < 4 || length > 1<<20 {
				s.done = true // ready, failed, or not PostgreSQL: stop looking
				return
			}
			if s.bodyN == 0 {
				s.hdrN = 0
			}
			continue
		}
		c := min(s.bodyN, len(b))
		if s.inKey && len(s.key)+c <= 4+maxCancelKey {
			s.key = append(s.key, b[:c]...)
		}
		s.bodyN -= c
		b = b[c:]
		if s.bodyN == 0 {
			s.hdrN = 0
			if s.inKey && len(s.key) >= 8 {
				s.keyRecd = string(s.key)
				registerCancelKey(s.keyRecd, s.addr)
			}
			s.inKey = false
		}
	}
}

// CloseWrite half-closes the machine connection.
func (s *keySniffer) CloseWrite() error {
	if cw, ok := s.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Close forgets the session's cancel key and closes the connection.
func (s *keySniffer) Close() error {
	if s.keyRecd != "" {
		forgetCancelKey(s.keyRecd)
		s.keyRecd = ""
	}
	return s.Conn.Close()
}

// forwardCancel sends a CancelRequest to the machine serving its session;
// an unknown key is ignored, as PostgreSQL ignores it.
func forwardCancel(m firstMessage, dialer *net.Dialer) error {
	addr, ok := lookupCancelKey(m.cancelKey())
	if !ok {
		return nil
	}
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(m.raw); err != nil {
		return err
	}
	// PostgreSQL answers nothing and closes; wait for that so the cancel
	// is processed before the client hears EOF.
	_, _ = io.Copy(io.Discard, c)
	return nil
}
