package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flyedge/caddy-flyedge/internal/testkit"
)

// goStandIn stands in for `go build -o <out> ./cmd/caddy` by copying the
// Caddy the tests built (a real build takes minutes on a cold machine),
// after saying so on stderr; any other use of go fails.
const goStandIn = `#!/bin/sh
if [ "$1" = build ]; then
	shift
	out= pkg=
	while [ $# -gt 0 ]; do
		case "$1" in
		-o) out=$2; shift ;;
		-*) ;;
		*) pkg=$1 ;;
		esac
		shift
	done
	if [ "$pkg" = ./cmd/caddy ] && [ -n "$out" ]; then
		echo "go build: building $out" >&2
		exec cp "$CADDY_BUILT" "$out"
	fi
fi
echo "go $*: the test's go stands in for go build -o <out> ./cmd/caddy only" >&2
exit 2
`

// readmeSetUp returns the README's first set-up command: the first line
// of its first code block, without its comment.
func readmeSetUp(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(b), "```sh\n")
	if !ok {
		t.Fatal("README.md has no sh code block")
	}
	first, _, _ := strings.Cut(block, "\n")
	cmd, _, _ := strings.Cut(first, "#")
	return strings.TrimSpace(cmd)
}

// demoCopy copies what the README's commands use (the scripts and the
// example configs) into a new folder and returns it.
func demoCopy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files, _ := filepath.Glob(filepath.Join(moduleRoot, "scripts", "*"))
	files = append(files, filepath.Join(moduleRoot, "Caddyfile.example"), filepath.Join(moduleRoot, "caddy.json.example"))
	for _, src := range files {
		f, _ := filepath.Rel(moduleRoot, src) // its path in the copy
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(src)
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(f)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, st.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// listenerPID returns the process that listens on port, or 0.
func listenerPID(t *testing.T, port int) int {
	t.Helper()
	for inode := range listeningOn(t, []int{port}) {
		if pid := socketPID(inode); pid != 0 {
			return pid
		}
	}
	return 0
}

// TestReadmeSetUp runs the README's first command the way a user does
// (in a copy of the scripts and configs, with go build standing in) and
// checks that it says the first build takes minutes before it builds,
// and that the demo it starts is ./caddy, the binary every "Try it"
// command runs.
func TestReadmeSetUp(t *testing.T) {
	requireCaddy(t)
	checkPortsFree(t, demoPorts...)
	cmd := readmeSetUp(t)
	dir := demoCopy(t)
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "go"), []byte(goStandIn), 0o755); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	var log logBuf
	p := exec.Command("bash", "-c", cmd)
	p.Dir = dir
	p.Env = append(caddyEnv(home), "PATH="+bin+":"+os.Getenv("PATH"), "CADDY_BUILT="+caddyBin)
	p.Stdout, p.Stderr = &log, &log
	p.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	ownProcess(p.Process.Pid)
	exited := make(chan struct{})
	go func() { p.Wait(); close(exited) }()
	defer func() {
		syscall.Kill(-p.Process.Pid, syscall.SIGINT) // the process group this test started
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		select {
		case <-exited:
			t.Fatalf("README's first command %q ended:\n%s", cmd, log.String())
		default:
		}
		if resp, err := adminClient.Get("http://localhost:2019/config/"); err == nil {
			resp.Body.Close()
			if listenerPID(t, 8443) != 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("README's first command %q started no demo within 30s:\n%s", cmd, log.String())
		}
	}
	out := log.String()
	says, builds := strings.Index(out, "first build takes"), strings.Index(out, "go build: building")
	if says < 0 || builds < 0 || says > builds {
		t.Errorf("README's first command %q does not say that the first build takes minutes before it builds:\n%s", cmd, out)
	}
	want := filepath.Join(dir, "caddy")
	for _, port := range []int{2019, 8443} {
		pid := listenerPID(t, port)
		if pid == 0 {
			t.Fatalf("nothing listens on %d", port)
		}
		ownProcess(pid)
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe != want {
			t.Errorf("README's first command %q: port %d is served by %q, not by ./caddy, which the README's commands run", cmd, port, exe)
		}
	}
	checkOwnListeners(t, demoPorts...)
	t.Run("TryIt", func(t *testing.T) { tryIt(t, dir, home) })
}

// readmeCommand is a command of the README's "Try it" and the first
// line of the output the README shows for it.
type readmeCommand struct{ cmd, out string }

// tryItCommands returns the commands of the README's "Try it" section.
func tryItCommands(t *testing.T) []readmeCommand {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(moduleRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Try it\n")
	if !ok {
		t.Fatal(`README.md has no "Try it" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var cmds []readmeCommand
	inBlock := false
	for _, line := range strings.Split(section, "\n") {
		switch {
		case strings.HasPrefix(line, "```"):
			inBlock = line == "```console"
		case !inBlock:
		case strings.HasPrefix(line, "$ "):
			cmds = append(cmds, readmeCommand{cmd: strings.TrimPrefix(line, "$ ")})
		case len(cmds) > 0 && cmds[len(cmds)-1].out == "":
			cmds[len(cmds)-1].out = line
		}
	}
	if len(cmds) == 0 {
		t.Fatal(`no commands in README.md's "Try it"`)
	}
	return cmds
}

// tryIt runs every command of the README's "Try it", in order, against
// the demo, as a user would in a second terminal in dir: each must end
// within 10s, exit 0 unless the README shows it failing, and print what
// the README shows, as far as its first word.
func tryIt(t *testing.T, dir, home string) {
	pg, err := net.DialTimeout("tcp", testkit.PostgresAddr, time.Second)
	if err == nil {
		pg.Close()
	}
	for _, c := range tryItCommands(t) {
		if strings.Contains(c.cmd, "psql ") && err != nil {
			t.Logf("PostgreSQL is not running at %s, so %q is not tried", testkit.PostgresAddr, c.cmd)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		cmd := exec.CommandContext(ctx, "bash", "-c", c.cmd)
		cmd.Dir = dir
		cmd.Env = append(caddyEnv(home), "PGCONNECT_TIMEOUT=5")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = time.Second
		began := time.Now()
		out, runErr := cmd.CombinedOutput()
		ended := ctx.Err() == nil
		cancel()
		if !ended {
			t.Errorf("README command %q did not end within 10s (printed %q)", c.cmd, out)
			continue
		}
		// a command fails only where the README shows it failing
		if runErr != nil && !strings.Contains(c.out, "curl: (") && !strings.Contains(c.out, "Error") {
			t.Errorf("README command %q failed: %v (printed %q)", c.cmd, runErr, out)
		}
		if want := strings.Fields(c.out); len(want) > 0 && !strings.Contains(string(out), want[0]) {
			t.Errorf("README command %q printed %q, want what the README shows: %q", c.cmd, out, c.out)
		}
		t.Logf("%s: %v", c.cmd, time.Since(began).Round(time.Millisecond))
	}
}
