package e2e

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// l4Machines are the machines of the layer 4 test app.
var l4Machines = []testMachine{
	{"00000000000f01", "iad", "127.0.53.1"},
	{"00000000000f02", "ord", "127.0.53.2"},
	{"00000000000f03", "lhr", "127.0.53.3"},
}

// l4Config is an edge with the app tcpapp: one service, pass-through on
// the edge port, and a layer4 server that proxies with fly_proxy.
func l4Config(edgePort, machinePort string) string {
	var ms []string
	for _, m := range l4Machines {
		ms = append(ms, fmt.Sprintf("machine %s %s %s", m.id, m.region, m.ip))
	}
	return fmt.Sprintf(`{
	admin %s
	persist_config off
	fly {
		region iad
		app tcpapp {
			service %s {
				port %s
			}
			%s
		}
	}
	layer4 {
		:%s {
			route {
				fly_proxy {
					dial_timeout 1s
				}
			}
		}
	}
}
`, adminAddr, machinePort, edgePort, strings.Join(ms, "\n\t\t\t"), edgePort)
}

func TestPassThrough(t *testing.T) {
	requireCaddy(t)
	edgePort, machinePort := freePort(), freePort()
	const reply = 64 << 20
	startSinks(t, machinePort, reply, l4Machines...)
	mustLoad(t, l4Config(edgePort, machinePort))
	addr := "127.0.0.1:" + edgePort

	t.Run("1 GiB up, 64 MiB down, half-close", func(t *testing.T) {
		const n = 1 << 30
		id, got, replyHash, replyLen := exchange(t, addr, n, "client")
		if id != "00000000000f01" {
			t.Errorf("machine %s, want the iad machine", id)
		}
		if want := hashOf(stream("client"), n); got != want {
			t.Fatalf("the machine received different bytes: sha256 %s, want %s", got, want)
		}
		if replyLen != reply || replyHash != hashOf(stream(id), reply) {
			t.Fatalf("the client received %d different bytes", replyLen)
		}
	})

	t.Run("empty connection", func(t *testing.T) {
		_, got, _, replyLen := exchange(t, addr, 0, "x")
		if got != hashOf(stream("x"), 0) || replyLen != reply {
			t.Fatalf("hash %s, reply %d bytes", got, replyLen)
		}
	})
}

func TestPassThroughFailover(t *testing.T) {
	requireCaddy(t)
	edgePort, machinePort := freePort(), freePort()
	lns := startSinks(t, machinePort, 10, l4Machines...)
	mustLoad(t, l4Config(edgePort, machinePort))
	addr := "127.0.0.1:" + edgePort

	if id, _, _, _ := exchange(t, addr, 100, "a"); id != "00000000000f01" {
		t.Fatalf("machine %s, want iad's", id)
	}
	lns["00000000000f01"].Close() // iad dies
	for i := range 5 {
		if id, _, _, _ := exchange(t, addr, 100, "b"); id != "00000000000f02" {
			t.Fatalf("connection %d after iad died: machine %s, want ord's (the next nearest)", i, id)
		}
	}
	lns["00000000000f02"].Close() // ord dies too
	if id, _, _, _ := exchange(t, addr, 100, "c"); id != "00000000000f03" {
		t.Fatalf("after ord died: machine %s, want lhr's", id)
	}
	lns["00000000000f03"].Close() // nothing left: the edge closes the connection
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil || n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("with every machine down the connection should be closed, read %d, %v", n, err)
	}
}

// TestL4SelectionPolicy uses caddy-l4's own proxy with the machines as
// static upstreams and lb_policy fly: the nearest healthy machine wins,
// and when the service's check marks it down, the next nearest.
func TestL4SelectionPolicy(t *testing.T) {
	requireCaddy(t)
	edgePort, machinePort := freePort(), freePort()
	lns := startSinks(t, machinePort, 10, l4Machines...)
	var ups []string
	for _, m := range []int{2, 0, 1} { // listed out of distance order on purpose
		ups = append(ups, net.JoinHostPort(l4Machines[m].ip, machinePort))
	}
	mustLoad(t, fmt.Sprintf(`{
	admin %s
	persist_config off
	fly {
		region iad
		app tcpapp {
			service %s {
				port %s
				check tcp {
					interval 1s
					timeout 100ms
					grace_period 10ms
				}
			}
			machine %s %s %s
			machine %s %s %s
			machine %s %s %s
		}
	}
	layer4 {
		:%s {
			route {
				proxy %s {
					lb_policy fly
				}
			}
		}
	}
}
`, adminAddr, machinePort, edgePort,
		l4Machines[0].id, l4Machines[0].region, l4Machines[0].ip,
		l4Machines[1].id, l4Machines[1].region, l4Machines[1].ip,
		l4Machines[2].id, l4Machines[2].region, l4Machines[2].ip,
		edgePort, strings.Join(ups, " ")))
	addr := "127.0.0.1:" + edgePort
	for range 3 {
		if id, _, _, _ := exchange(t, addr, 10, "a"); id != l4Machines[0].id {
			t.Fatalf("machine %s, want iad's %s", id, l4Machines[0].id)
		}
	}
	lns[l4Machines[0].id].Close()
	waitFor(t, "connections to move to ord", func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.(*net.TCPConn).CloseWrite()
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.HasPrefix(line, l4Machines[1].id)
	})
}
