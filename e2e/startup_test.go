package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startupEdge is an edge with its admin endpoint on %[1]s, its port
// %[2]s, a third line in fly_ips (%[3]s) and a site that names the edge
// (EDGE_NAME in its environment).
const startupEdge = `{
	admin %[1]s
	persist_config off
	skip_install_trust
	fly {
		app web {
			service 3000 {
				port %[2]s http
			}
			machine 148ed193b95189 iad 127.0.1.1
		}
	}
	fly_ips {
		ports %[2]s
		auto_allocate off
		issuer internal
		%[3]s
	}
	on_demand_tls {
		permission fly
	}
}

http:// {
	bind fly/edge
	respond "{env.EDGE_NAME}"
}
`

// startupProc is a Caddy process a startup test runs.
type startupProc struct {
	cmd    *exec.Cmd
	log    *logBuf
	exited chan struct{}
}

// startEdgeProc starts a Caddy named name on config, with a home of its own.
func startEdgeProc(t *testing.T, name, config string) *startupProc {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &startupProc{log: new(logBuf), exited: make(chan struct{})}
	p.cmd = exec.Command(caddyBin, "run", "--config", file, "--adapter", "caddyfile")
	p.cmd.Env = append(caddyEnv(dir), "EDGE_NAME="+name)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.SysProcAttr = dieWithTests()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ownProcess(p.cmd.Process.Pid)
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM) // an error when it exited already
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// started waits until p serves its config (true) or exits (false).
func (p *startupProc) started(t *testing.T) bool {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case <-p.exited:
			return false
		default:
		}
		if strings.Contains(p.log.String(), "serving initial configuration") {
			return true
		}
	}
	t.Fatalf("caddy neither started nor exited within 60s:\n%s", p.log)
	return false
}

// TestSecondEdgeRefused: a second edge started on the admin address of a
// running one, or on its ports, exits non-zero and says which process
// serves them (Caddy binds with SO_REUSEPORT: it would have split the
// connections and admin calls with the first in silence); the first goes
// on serving alone. With share_ports, an edge shares its ports on
// purpose.
func TestSecondEdgeRefused(t *testing.T) {
	requireCaddy(t)
	admin, port := freeAddr(), freePort()
	first := startEdgeProc(t, "first", fmt.Sprintf(startupEdge, admin, port, ""))
	if !first.started(t) {
		t.Fatalf("the first edge exited:\n%s", first.log)
	}
	pid := strconv.Itoa(first.cmd.Process.Pid)
	edgeURL := "http://127.0.0.1:" + port + "/"
	firstServes := func(when string) {
		t.Helper()
		if status, _ := call(t, admin, http.MethodGet, "/config/", "", nil); status != http.StatusOK {
			t.Errorf("%s: the first edge's admin endpoint answered %d", when, status)
		}
		for range 20 {
			resp, err := http.Get(edgeURL)
			if err != nil {
				t.Fatalf("%s: %v", when, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "first" {
				t.Fatalf("%s: %s answered %q, want the first edge", when, edgeURL, b)
			}
		}
	}
	firstServes("one edge")

	for _, tc := range []struct{ name, admin, want string }{
		{"same admin address", admin, "admin endpoint " + admin + " is already served by another process (pid " + pid + ": "},
		{"same edge port", freeAddr(), "edge port " + port + " is already served by another process (pid " + pid + ": "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			second := startEdgeProc(t, "second", fmt.Sprintf(startupEdge, tc.admin, port, ""))
			if second.started(t) {
				t.Fatalf("a second edge started beside the first:\n%s", second.log)
			}
			if code := second.cmd.ProcessState.ExitCode(); code == 0 {
				t.Errorf("the second edge exited with 0")
			}
			if log := second.log.String(); !strings.Contains(log, tc.want) || !strings.Contains(log, "stop it first") {
				t.Errorf("the second edge's log does not say %q ... stop it first:\n%s", tc.want, log)
			}
			firstServes("after the second edge")
			checkOwnListeners(t, portNumber(t, admin), portNumber(t, port))
		})
	}

	t.Run("share_ports", func(t *testing.T) {
		shared := startEdgeProc(t, "shared", fmt.Sprintf(startupEdge, freeAddr(), port, "share_ports"))
		if !shared.started(t) {
			t.Fatalf("an edge with share_ports did not start beside the first:\n%s", shared.log)
		}
		if n := len(listeningOn(t, []int{portNumber(t, port)})); n != 2 {
			t.Errorf("%d sockets listen on the shared port, want 2", n)
		}
	})
}

// portNumber returns the port of an address or the number of a port.
func portNumber(t *testing.T, s string) int {
	t.Helper()
	if i := strings.LastIndex(s, ":"); i >= 0 {
		s = s[i+1:]
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
