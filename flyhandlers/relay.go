package flyhandlers

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/mholt/caddy-l4/layer4"
)

// bufPool holds the buffers of relays that cannot splice.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}

// Relay copies bytes between the client connection cx and the machine
// connection up until both directions ended, passing each half-close on.
// The bytes cx has read ahead (prefetched while matching) go first; after
// them, if cx is a plain TCP connection, the copy runs between the two
// sockets so that the kernel can splice.
func Relay(cx *layer4.Connection, up net.Conn) error {
	if pending := cx.MatchingBytes(); len(pending) > 0 {
		if _, err := up.Write(pending); err != nil {
			return err
		}
		// consume them from cx's buffer: this read never reaches the socket
		if _, err := io.CopyN(io.Discard, cx, int64(len(pending))); err != nil {
			return err
		}
	}
	var down io.ReadWriter = cx
	if tc, ok := cx.Conn.(*net.TCPConn); ok {
		down = tc
	}
	var finished atomic.Int32
	errc := make(chan error, 1)
	go func() {
		errc <- copyHalf(up, down, &finished)
	}()
	err := copyHalf(down, up, &finished)
	if err2 := <-errc; err == nil {
		err = err2
	}
	return err
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

// spliceAfter is how many bytes a direction copies through a buffer
// before it hands over to the kernel: short exchanges cost fewer system
// calls with read/write, bulk transfers far less CPU with splice.
const spliceAfter = 64 << 10

// copyHalf copies src to dst until EOF, then half-closes dst unless the
// other direction already ended: then both connections are about to be
// closed, which sends the FIN anyway.
func copyHalf(dst io.Writer, src io.Reader, finished *atomic.Int32) error {
	_, srcTCP := src.(*net.TCPConn)
	_, dstTCP := dst.(*net.TCPConn)
	bp := bufPool.Get().(*[]byte)
	buf := *bp
	var err error
	for total := 0; ; {
		if srcTCP && dstTCP && total >= spliceAfter {
			bufPool.Put(bp)
			bp = nil
			_, err = io.Copy(dst, src) // (*net.TCPConn).ReadFrom splices
			break
		}
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
				break
			}
			total += n
		}
		if rerr != nil {
			if rerr != io.EOF {
				err = rerr
			}
			break
		}
	}
	if bp != nil {
		bufPool.Put(bp)
	}
	if finished.Add(1) == 1 {
		CloseWrite(dst)
	}
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
