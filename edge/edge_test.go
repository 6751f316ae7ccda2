package edge

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

func TestEdgePorts(t *testing.T) {
	e := Edge{Ports: []string{"80", "443", "10000-10002"}}
	if err := e.setPorts(); err != nil {
		t.Fatal(err)
	}
	for port, want := range map[int]bool{80: true, 443: true, 10000: true, 10002: true, 10003: false, 8080: false} {
		if e.Serves(port) != want {
			t.Errorf("Serves(%d) = %v", port, !want)
		}
	}
	if got := e.PortList(); got != "80 443 10000-10002" {
		t.Errorf("PortList() = %q", got)
	}
	if e.HTTP != "edge" {
		t.Errorf("the HTTP listener's name defaults to %q", e.HTTP)
	}
	for _, tc := range []struct {
		ports []string
		want  string
	}{
		{[]string{"80", "0"}, `ports[1]: "0" is not a port number`},
		{[]string{"70000"}, `ports[0]: "70000" is not a port number`},
		{[]string{"http"}, `ports[0]: "http" is not a port number`},
		{[]string{"80", "79-81"}, "ports[1]: port 80 is listed twice"},
		{nil, "ports: the edge has no ports to listen on"},
	} {
		e := Edge{Ports: tc.ports}
		if err := e.setPorts(); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.ports, err, tc.want)
		}
	}
}

// TestEdgeHandOff: an HTTP connection goes to the newest listener of its
// name, waits a bounded time for one, and is refused after it.
func TestEdgeHandOff(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	if err := deliverTo("test-none", c1, 50*time.Millisecond); err == nil || !strings.Contains(err.Error(), "no HTTP server listens on fly/test-none") {
		t.Errorf("no listener: %v", err)
	}
	old, _ := listenEdge(t.Context(), "fly", "test", "80", 0, net.ListenConfig{})
	newer, _ := listenEdge(t.Context(), "fly", "test", "80", 0, net.ListenConfig{})
	got := make(chan net.Conn, 1)
	go func() {
		c, _ := newer.(net.Listener).Accept()
		got <- c
	}()
	if err := deliverTo("test", c1, time.Second); !errors.Is(err, errHandedOff) {
		t.Fatalf("delivering: %v", err)
	}
	if c := <-got; c != c1 {
		t.Error("the newest listener did not get the connection")
	}
	newer.(net.Listener).Close()
	go func() {
		c, _ := old.(net.Listener).Accept()
		got <- c
	}()
	if err := deliverTo("test", c2, time.Second); !errors.Is(err, errHandedOff) || <-got != c2 {
		t.Errorf("after the newest closed, the older one: %v", err)
	}
	old.(net.Listener).Close()
	// a listener that comes within the wait gets it
	go func() {
		time.Sleep(20 * time.Millisecond)
		l, _ := listenEdge(t.Context(), "fly", "late", "80", 0, net.ListenConfig{})
		c, _ := l.(net.Listener).Accept()
		got <- c
		l.(net.Listener).Close()
	}()
	if err := deliverTo("late", c1, time.Second); !errors.Is(err, errHandedOff) || <-got != c1 {
		t.Errorf("a listener that starts late: %v", err)
	}
}
