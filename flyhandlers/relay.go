package flyhandlers

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mholt/caddy-l4/layer4"
)

// bufPool holds the buffers of relays that cannot splice.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

// spliceAfter is how many bytes a direction copies through a buffer
// before it hands over to the kernel: short exchanges cost fewer system
// calls with read/write, bulk transfers far less CPU with splice.
const spliceAfter = 64 << 10

// spliceChunk is how much one splice call may move before the relay
// looks at the clock again (to push the idle deadline on).
const spliceChunk = 1 << 20

// Relay copies bytes between the client connection cx and the machine
// connection up until both directions ended, passing each half-close on,
// or until no byte moved in either direction for idle: then both
// connections are closed (by the caller) and ErrIdle is returned. It
// returns the bytes copied from the client to the machine (in) and back
// (out).
// The bytes cx has read ahead (prefetched while matching) go first; after
// them, if cx is a plain TCP connection, the copy runs between the two
// sockets so that the kernel can splice.
func Relay(cx *layer4.Connection, up net.Conn, idle time.Duration) (in, out int64, err error) {
	if pending := cx.MatchingBytes(); len(pending) > 0 {
		if err := up.SetWriteDeadline(time.Now().Add(idle)); err != nil {
			return 0, 0, err
		}
		if _, err := up.Write(pending); err != nil {
			return 0, 0, err
		}
		in = int64(len(pending))
		// consume them from cx's buffer: this read never reaches the socket
		if _, err := io.CopyN(io.Discard, cx, int64(len(pending))); err != nil {
			return in, 0, err
		}
	}
	var down net.Conn = cx
	if tc := tcpConn(cx.Conn); tc != nil {
		down = tc
	}
	r := &relay{down: down, up: up, idle: idle}
	r.touch()
	errc := make(chan error, 1)
	var sent int64 // client to machine, counted by the other goroutine
	go func() {
		errc <- r.copyHalf(up, down, &sent)
	}()
	err = r.copyHalf(down, up, &out)
	if err2 := <-errc; err == nil {
		err = err2
	}
	return in + sent, out, err
}

// ErrIdle means that a relay ended because no byte moved for its idle
// timeout.
var ErrIdle = errors.New("connection idle")

// relay is one connection's two directions.
type relay struct {
	down, up net.Conn
	idle     time.Duration
	active   atomic.Int64 // when a byte last moved, in Unix nanoseconds
	finished atomic.Int32 // directions that ended
	idled    atomic.Bool
	aborted  atomic.Bool // one direction failed (a reset): end the other
}

func (r *relay) touch() { r.active.Store(time.Now().UnixNano()) }

// isIdle tells whether nothing moved in either direction for r.idle;
// once true, it stays true and the other direction is woken to end too.
func (r *relay) isIdle() bool {
	if r.idled.Load() || time.Since(time.Unix(0, r.active.Load())) >= r.idle {
		r.stop()
		return true
	}
	return false
}

// stop ends both directions: their reads and writes fail at once.
func (r *relay) stop() {
	if !r.idled.Swap(true) {
		past := time.Unix(1, 0)
		_ = r.down.SetDeadline(past)
		_ = r.up.SetDeadline(past)
	}
}

// copyHalf copies src to dst until EOF, then half-closes dst unless the
// other direction already ended: then both connections are about to be
// closed, which sends the FIN anyway. Reads and writes may wait about the
// idle timeout (the deadlines move on at most every idle/16, which keeps
// the timer work off the per-read path); a read that times out while the
// other direction moved bytes lately waits on, a write that times out
// ends the relay.
func (r *relay) copyHalf(dst, src net.Conn, copied *int64) error {
	_, srcTCP := src.(*net.TCPConn)
	_, dstTCP := dst.(*net.TCPConn)
	bp := bufPool.Get().(*[]byte)
	buf := *bp
	var err error
	var set, writeBy time.Time // when the deadlines were last moved; the write deadline
	for total := 0; ; {
		if now := time.Now(); now.Sub(set) >= r.idle/16 {
			set = now
			if err = src.SetReadDeadline(now.Add(r.idle)); err != nil {
				break
			}
			// later than the read deadline, so that a timeout before it
			// is a read's: a splice whose write timed out has lost what
			// it held, and must end the relay
			writeBy = now.Add(r.idle + r.idle/4)
			if err = dst.SetWriteDeadline(writeBy); err != nil {
				break
			}
			// after the deadlines moved: an abort or a stop that came
			// before them would be undone by them
			if r.aborted.Load() || r.idled.Load() {
				err = os.ErrDeadlineExceeded
				break
			}
		}
		if srcTCP && dstTCP && total >= spliceAfter {
			if bp != nil {
				bufPool.Put(bp)
				bp = nil
			}
			var n int64
			n, err = io.CopyN(dst, src, spliceChunk) // (*net.TCPConn).ReadFrom splices
			if n > 0 {
				r.touch()
				*copied += n
			}
			if errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(writeBy) {
				r.stop() // the receiver took nothing for the idle timeout
				break
			}
			if err == nil || n > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
		} else {
			var n int
			n, err = src.Read(buf)
			if n > 0 {
				r.touch()
				if _, werr := dst.Write(buf[:n]); werr != nil {
					if errors.Is(werr, os.ErrDeadlineExceeded) {
						r.stop() // the receiver took nothing for the idle timeout
					}
					err = werr
					break
				}
				total += n
				*copied += int64(n)
			}
			if err == nil {
				continue
			}
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && !r.aborted.Load() && !r.isIdle() {
			set = time.Time{}
			continue // the other direction is busy; this one waits on
		}
		break
	}
	if bp != nil {
		bufPool.Put(bp)
	}
	broken := err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, net.ErrClosed)
	if broken && !r.aborted.Swap(true) {
		// a reset or another failure: the other direction has nothing
		// more to wait for
		past := time.Unix(1, 0)
		_ = r.down.SetDeadline(past)
		_ = r.up.SetDeadline(past)
	}
	if r.finished.Add(1) == 1 && !r.idled.Load() && !broken {
		CloseWrite(dst)
	}
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		err = nil
	case r.idled.Load():
		err = ErrIdle
	case errors.Is(err, os.ErrDeadlineExceeded) && r.aborted.Load():
		err = nil // ended because the other direction broke
	}
	return err
}

// TCPWrapper is a TCP connection with only its Close changed (the
// edge's counted connections): its bytes are the TCP connection's.
type TCPWrapper interface {
	TCPConn() *net.TCPConn
}

// tcpConn returns the TCP connection c is, or wraps without changing its
// bytes (TCPWrapper), nil when there is none (a TLS connection's bytes
// are not its TCP connection's): the relay copies to and from it
// directly, so the kernel splices.
func tcpConn(c net.Conn) *net.TCPConn {
	switch v := c.(type) {
	case *net.TCPConn:
		return v
	case TCPWrapper:
		return v.TCPConn()
	}
	return nil
}

type closeWriter interface{ CloseWrite() error }

// CloseWrite half-closes w when it can: a TCP or TLS connection, or a
// layer4 connection around one.
func CloseWrite(w io.Writer) {
	if cw, ok := w.(closeWriter); ok {
		_ = cw.CloseWrite()
	} else if cx, ok := w.(*layer4.Connection); ok {
		if cw, ok := cx.Conn.(closeWriter); ok {
			_ = cw.CloseWrite()
		}
	}
}
