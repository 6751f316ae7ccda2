package e2e

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// udpEdge serves app game's udp service (machines in iad and lhr) on the
// edge's UDP port, and app chat's, which has only the shared address.
const udpEdge = `{
	admin %[1]s
	persist_config off
	skip_install_trust
	storage file_system %[2]s
	fly {
		region iad
		base_domain %[3]s
		app game {
			service %[4]s udp {
				port %[5]s
			}
			machine 0000000000f201 iad 127.0.64.1
			machine 0000000000f202 lhr 127.0.64.2
		}
		app chat {
			service %[4]s udp {
				port %[5]s
			}
			service 8080 {
				port %[6]s http
			}
			machine 0000000000f203 iad 127.0.64.3
		}
	}
	fly_ips {
		shared_v4 ` + sharedV4 + `
		v4 ` + v4Pool + `
		auto_allocate off
		http_port %[6]s
	}
	fly_edge {
		ports %[6]s
		udp_ports %[5]s
		udp_idle_timeout 1s
		issuer internal
	}
}
`

// udpMachine echoes each datagram as "<machine id> <the edge's source
// port> <payload>"; it counts the datagrams it got.
type udpMachine struct {
	id   string
	conn *net.UDPConn
	got  atomic.Int64
}

func startUDPMachine(t *testing.T, id, addr string) *udpMachine {
	t.Helper()
	ua, _ := net.ResolveUDPAddr("udp", addr)
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		t.Fatalf("machine %s: %v", id, err)
	}
	m := &udpMachine{id: id, conn: conn}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 9000)
		for {
			n, src, err := conn.ReadFromUDP(buf)
			if err != nil {
				return
			}
			m.got.Add(1)
			conn.WriteToUDP(fmt.Appendf(nil, "%s %d %s", id, src.Port, buf[:n]), src)
		}
	}()
	return m
}

// udpClient is a client socket that is not connected, so the test sees
// where each answer comes from.
type udpClient struct {
	t    *testing.T
	conn *net.UDPConn
	to   *net.UDPAddr
}

func newUDPClient(t *testing.T, to string) *udpClient {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ua, _ := net.ResolveUDPAddr("udp4", to)
	return &udpClient{t: t, conn: conn, to: ua}
}

// ask sends payload and returns the answer's machine and edge port, or
// an error when none comes within wait or it comes from elsewhere.
func (c *udpClient) ask(payload string, wait time.Duration) (machine, edgePort string, err error) {
	if _, err := c.conn.WriteToUDP([]byte(payload), c.to); err != nil {
		return "", "", err
	}
	buf := make([]byte, 9000)
	c.conn.SetReadDeadline(time.Now().Add(wait))
	n, from, err := c.conn.ReadFromUDP(buf)
	if err != nil {
		return "", "", err
	}
	if from.String() != c.to.String() {
		return "", "", fmt.Errorf("answer from %s; the client sent to %s", from, c.to)
	}
	parts := strings.SplitN(string(buf[:n]), " ", 3)
	if len(parts) != 3 || parts[2] != payload {
		return "", "", fmt.Errorf("answer %q to %q", buf[:n], payload)
	}
	return parts[0], parts[1], nil
}

// TestUDP: datagrams to an app's dedicated IPv4 address reach its
// nearest machine and the answers come back from the address the client
// sent to; a client's flow stays on one machine until it is idle; a
// machine that dies is left for the other region's; many flows at once
// all get their answers; the shared address and an app without a
// dedicated IPv4 address serve no UDP.
func TestUDP(t *testing.T) {
	requireCaddy(t)
	udpPort, httpPort, machinePort := freePort(), freePort(), freePort()
	storage := t.TempDir()
	edgeCount++
	domain := fmt.Sprintf("udp-%d.test", edgeCount)
	iad := startUDPMachine(t, "0000000000f201", "127.0.64.1:"+machinePort)
	lhr := startUDPMachine(t, "0000000000f202", "127.0.64.2:"+machinePort)
	chat := startUDPMachine(t, "0000000000f203", "127.0.64.3:"+machinePort)
	mustLoad(t, fmt.Sprintf(udpEdge, adminAddr, storage, domain, machinePort, udpPort, httpPort))
	checkOwnListeners(t, mustAtoi(httpPort))
	gameV4 := allocate(t, adminAddr, "game", "v4")
	allocate(t, adminAddr, "game", "shared_v4")
	allocate(t, adminAddr, "chat", "shared_v4")

	t.Run("round trip, flow on one machine", func(t *testing.T) {
		c := newUDPClient(t, net.JoinHostPort(gameV4, udpPort))
		// the edge counts a flow's bytes once the flow has ended
		gameBytes := func() float64 {
			v, _ := value(scrape(t), "caddy_fly_bytes_total", map[string]string{"app": "game", "direction": "in"})
			return v
		}
		counted := gameBytes()
		var first string
		for i := range 20 {
			machine, edgePort, err := c.ask(fmt.Sprintf("ping %d", i), 2*time.Second)
			if err != nil {
				t.Fatalf("datagram %d: %v", i, err)
			}
			if machine != iad.id {
				t.Fatalf("datagram %d went to %s; want the iad machine", i, machine)
			}
			if first == "" {
				first = edgePort
			} else if edgePort != first {
				t.Fatalf("datagram %d came to the machine from edge port %s, the first from %s: the flow moved", i, edgePort, first)
			}
		}
		// idle longer than udp_idle_timeout: the edge ends the flow, and
		// the next datagram is a new flow
		waitFor(t, "the edge to end the idle flow", func() bool { return gameBytes() > counted })
		_, edgePort, err := c.ask("after idle", 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if edgePort == first {
			t.Errorf("after the idle timeout the flow still used edge port %s", first)
		}
	})

	t.Run("shared address and apps without a dedicated IPv4 address", func(t *testing.T) {
		before := iad.got.Load() + lhr.got.Load() + chat.got.Load()
		for _, to := range []string{net.JoinHostPort(sharedV4, udpPort), net.JoinHostPort(gameV4, httpPort)} {
			c := newUDPClient(t, to)
			if m, _, err := c.ask("hello", 300*time.Millisecond); err == nil {
				t.Errorf("UDP to %s answered by %s; the edge serves UDP on dedicated IPv4 only", to, m)
			}
		}
		if after := iad.got.Load() + lhr.got.Load() + chat.got.Load(); after != before {
			t.Errorf("machines got %d datagrams the edge should have dropped", after-before)
		}
		var apps []struct {
			Name  string   `json:"name"`
			Notes []string `json:"notes"`
		}
		call(t, adminAddr, http.MethodGet, "/fly/apps", "", &apps)
		for _, a := range apps {
			switch {
			case a.Name == "chat" && (len(a.Notes) != 1 || !strings.Contains(a.Notes[0], "UDP is served on dedicated IPv4 addresses only, and app chat has none")):
				t.Errorf("GET /fly/apps: chat's notes %q; want why its udp service gets nothing", a.Notes)
			case a.Name == "game" && len(a.Notes) > 0:
				t.Errorf("GET /fly/apps: game has a dedicated IPv4 address, yet notes %q", a.Notes)
			}
		}
	})

	t.Run("many flows at once", func(t *testing.T) {
		var wg sync.WaitGroup
		var ok, lost atomic.Int64
		for k := range 50 {
			wg.Go(func() {
				c := newUDPClient(t, net.JoinHostPort(gameV4, udpPort))
				for i := range 20 {
					if _, _, err := c.ask(fmt.Sprintf("flow %d datagram %d", k, i), 2*time.Second); err != nil {
						lost.Add(1)
						continue
					}
					ok.Add(1)
				}
			})
		}
		wg.Wait()
		t.Logf("50 flows x 20 round trips: %d answered, %d lost", ok.Load(), lost.Load())
		if lost.Load() > 0 {
			t.Errorf("%d of 1000 round trips lost on loopback", lost.Load())
		}
	})

	t.Run("a machine that dies", func(t *testing.T) {
		c := newUDPClient(t, net.JoinHostPort(gameV4, udpPort))
		if m, _, err := c.ask("before", 2*time.Second); err != nil || m != iad.id {
			t.Fatalf("before: %s, %v", m, err)
		}
		iad.conn.Close()
		// the flow's next datagram meets the closed port (ICMP); the one
		// after goes to the machine in lhr
		var got string
		for i := range 10 {
			m, _, err := c.ask(fmt.Sprintf("after %d", i), 300*time.Millisecond)
			if err == nil {
				got = m
				break
			}
		}
		if got != lhr.id {
			t.Fatalf("after the iad machine died: answered by %q; want the lhr machine", got)
		}
		// new clients go to lhr at once
		if m, _, err := newUDPClient(t, net.JoinHostPort(gameV4, udpPort)).ask("new", 2*time.Second); err != nil || m != lhr.id {
			t.Fatalf("a new client: %s, %v", m, err)
		}
	})
}
