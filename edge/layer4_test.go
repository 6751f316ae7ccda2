package edge

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestGoneClientsLogQuietly: a client that closes before its bytes
// matched is logged at debug level, a real matching failure as caddy-l4
// logs it.
func TestGoneClientsLogQuietly(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	logger := zap.New(goneClients{core}).Named("fly_layer4")
	logger.Error("matching connection", zap.String("remote", "192.0.2.1:5000"), zap.Error(io.EOF))
	logger.Error("matching connection", zap.Error(syscall.ECONNRESET))
	logger.Error("matching connection", zap.Error(errors.New("tls: bad record")))
	logger.Warn("something else", zap.Error(io.EOF))
	var got []string
	for _, e := range logs.All() {
		got = append(got, e.Level.String()+" "+e.Message+" "+e.ContextMap()["error"].(string))
	}
	want := []string{"error matching connection tls: bad record", "warn something else EOF"}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("logged %q, want %q", got, want)
	}
}

// TestWrappedListenerKeepsNoConnection: a connection handed to the HTTP
// server through a fly_layer4 listener that closes before the server
// accepts it is not taken (its handler closes it); it used to wait in a
// buffer no one read, open, for good.
func TestWrappedListenerKeepsNoConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := (&ListenerWrapper{logger: zap.NewNop()}).WrapListener(ln).(*wrappedListener)
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	delivered := make(chan error, 1)
	go func() { delivered <- l.deliver(c1) }()
	select {
	case err := <-delivered:
		t.Fatalf("delivered with no server accepting: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	l.Close()
	select {
	case err := <-delivered:
		if errors.Is(err, errHandedOff) {
			t.Fatal("the connection was taken by a listener that closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the hand-off waits on a closed listener")
	}
}
