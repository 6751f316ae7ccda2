package flyhandlers

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
)

// relayPair starts a relay between a client and a machine connection and
// returns the client's end, the machine's end and the relay's result.
func relayPair(t *testing.T, idle time.Duration) (client, machine net.Conn, done <-chan error) {
	t.Helper()
	edge := testkit.Listen(t, "127.0.0.1:0")
	mln := testkit.Listen(t, "127.0.0.1:0")
	client, cx := accepted(t, edge)
	up, err := net.Dial("tcp", mln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	machine, err = mln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { machine.Close() })
	machine.SetDeadline(time.Now().Add(10 * time.Second))
	res := make(chan error, 1)
	go func() {
		_, _, err := Relay(cx, up, idle)
		up.Close()
		cx.Close()
		res <- err
	}()
	return client, machine, res
}

// TestRelayBothWays: bytes go through untouched both ways, a bulk
// transfer well past the splice threshold included, and each side's
// half-close reaches the other.
func TestRelayBothWays(t *testing.T) {
	client, machine, done := relayPair(t, time.Minute)
	payload := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16) // 3 MiB
	go func() {
		client.Write(payload)
		client.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(machine)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Fatalf("machine got %d bytes that differ from the %d sent", len(got), len(payload))
	}
	machine.Write([]byte("answer after the client's FIN"))
	machine.(*net.TCPConn).CloseWrite()
	back, err := io.ReadAll(client)
	if err != nil || string(back) != "answer after the client's FIN" {
		t.Fatalf("client got %q, %v", back, err)
	}
	if err := <-done; err != nil {
		t.Errorf("relay: %v", err)
	}
}

// TestRelayIdle: when neither side says anything for the idle timeout,
// the relay ends and both sides see their connection closed.
func TestRelayIdle(t *testing.T) {
	client, machine, done := relayPair(t, 200*time.Millisecond)
	start := time.Now()
	if err := <-done; !errors.Is(err, ErrIdle) {
		t.Fatalf("relay: %v, want ErrIdle", err)
	}
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("closed after %v, before the idle timeout", took)
	}
	for name, c := range map[string]net.Conn{"client": client, "machine": machine} {
		if n, err := c.Read(make([]byte, 1)); err == nil {
			t.Errorf("%s: read %d bytes, want the connection closed", name, n)
		}
	}
}

// TestRelayOneWayIsNotIdle: a download where the client says nothing is
// not idle: the silent direction waits as long as the other moves bytes.
func TestRelayOneWayIsNotIdle(t *testing.T) {
	client, machine, done := relayPair(t, 150*time.Millisecond)
	go func() {
		for range 12 { // 600 ms, four idle timeouts
			machine.Write([]byte("x"))
			time.Sleep(50 * time.Millisecond)
		}
		machine.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(client)
	if err != nil || len(got) != 12 {
		t.Fatalf("client got %d bytes, %v; want all 12", len(got), err)
	}
	client.(*net.TCPConn).CloseWrite()
	if err := <-done; err != nil {
		t.Errorf("relay: %v", err)
	}
}

// TestRelayReset: a machine that resets its connection ends the client's
// at once, not after the idle timeout.
func TestRelayReset(t *testing.T) {
	client, machine, done := relayPair(t, time.Minute)
	machine.(*net.TCPConn).SetLinger(0)
	machine.Close() // RST
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the relay still waits after the machine reset its connection")
	}
	if n, err := client.Read(make([]byte, 1)); err == nil {
		t.Errorf("client read %d bytes, want its connection closed", n)
	}
}
