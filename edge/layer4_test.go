package edge

import (
	"errors"
	"io"
	"syscall"
	"testing"

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
