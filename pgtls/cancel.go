package pgtls

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// session is what a cancel request needs of the session it cancels.
type session struct {
	machine string // the machine's address, where cancels go
	app     string // the app the session reached
	name    string // the TLS server name it named, "" for none
}

// cancelKeys maps a session's cancel key (process ID and secret, as in
// BackendKeyData) to its session, so a CancelRequest reaches that
// machine. It is shared by every config.
var cancelKeys = struct {
	sync.Mutex
	m map[string]session
}{m: make(map[string]session)}

func registerCancelKey(key string, s session) {
	cancelKeys.Lock()
	cancelKeys.m[key] = s
	cancelKeys.Unlock()
}

// forgetCancelKey forgets key if it is still s's (a later session may
// have got the same key).
func forgetCancelKey(key string, s session) {
	cancelKeys.Lock()
	if cancelKeys.m[key] == s {
		delete(cancelKeys.m, key)
	}
	cancelKeys.Unlock()
}

func lookupCancelKey(key string) (session, bool) {
	cancelKeys.Lock()
	defer cancelKeys.Unlock()
	s, ok := cancelKeys.m[key]
	return s, ok
}

// keySniffer is the machine connection of one session: it passes the
// server's bytes through untouched while it follows the message framing
// until ReadyForQuery, recording the BackendKeyData on the way.
type keySniffer struct {
	net.Conn
	session
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
			if s.inKey && len(s.key) >= 8 && s.keyRecd == "" { // one key per session
				s.keyRecd = string(s.key)
				registerCancelKey(s.keyRecd, s.session)
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
		forgetCancelKey(s.keyRecd, s.session)
		s.keyRecd = ""
	}
	return s.Conn.Close()
}

// forwardCancel sends a CancelRequest to the machine at addr and waits
// for the machine to close the connection, as PostgreSQL does once it
// has processed the cancel, so that the client hears EOF after that; the
// whole exchange takes at most timeout.
func forwardCancel(m firstMessage, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c, err := (&net.Dialer{Deadline: deadline}).Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	if _, err := c.Write(m.raw); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	return err
}

// cancel forwards a CancelRequest that arrived on local, naming server
// name ("" for none), to the machine of its session, if the cancel
// reaches the session's app; an unknown key or another app's is ignored,
// as PostgreSQL ignores a wrong key.
func (h *Handler) cancel(local net.Addr, name string, msg firstMessage) error {
	s, ok := lookupCancelKey(msg.cancelKey())
	if !ok {
		return nil
	}
	if name == "" {
		name = s.name
	}
	if rt, err := h.app.Resolve(local, name); err != nil || rt.App != s.app {
		if c := h.logger.Check(zapcore.DebugLevel, "cancel request denied"); c != nil {
			c.Write(zap.String("app", s.app), zap.String("local", local.String()), zap.Error(err))
		}
		return nil
	}
	if err := forwardCancel(msg, s.machine, time.Duration(h.CancelTimeout)); err != nil {
		if c := h.logger.Check(zapcore.DebugLevel, "cancel request not delivered"); c != nil {
			c.Write(zap.String("app", s.app), zap.Error(err))
		}
	}
	return nil
}
