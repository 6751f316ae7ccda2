package routing

import (
	"context"
	"errors"
	"fmt"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// connectApp is an app with two machines in iad (127.0.0.1, 127.0.0.2)
// and one in ord (127.0.0.3), all on one internal port, and a listener
// on the machines named in up; the others refuse. It returns the route
// of its layer 4 port.
func connectApp(t *testing.T, failover *Failover, conc *Concurrency, up ...string) *Route {
	t.Helper()
	ips := map[string]string{"000000000000a1": "127.0.0.1", "000000000000a2": "127.0.0.2", "000000000000b1": "127.0.0.3"}
	port := freePort(t)
	for _, id := range up {
		ln, err := net.Listen("tcp", net.JoinHostPort(ips[id], strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { _ = c.Close() })
			}
		}()
	}
	a := &App{
		Region:       "iad",
		BaseDomain:   "edge.test",
		QueueTimeout: caddy.Duration(200 * time.Millisecond),
		Failover:     failover,
		Apps: map[string]*Application{
			"db": {
				Services: []*Service{{
					InternalPort: port,
					Ports:        []*Port{{Port: 5432}},
					Concurrency:  conc,
				}},
				Machines: []*Machine{
					{ID: "000000000000a1", Region: "iad", Address: ips["000000000000a1"]},
					{ID: "000000000000a2", Region: "iad", Address: ips["000000000000a2"]},
					{ID: "000000000000b1", Region: "ord", Address: ips["000000000000b1"]},
				},
			},
		},
	}
	if err := provision(t, a); err != nil {
		t.Fatal(err)
	}
	rt, err := routeFor(a, "db.edge.test", 5432)
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// freePort returns a TCP port free on 127.0.0.1, 127.0.0.2 and 127.0.0.3
// a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		_ = ln.Close()
		free := true
		for _, ip := range []string{"127.0.0.2", "127.0.0.3"} {
			ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				free = false
				break
			}
			_ = ln.Close()
		}
		if free {
			return port
		}
	}
	t.Fatal("no port free on 127.0.0.1-3")
	return 0
}

// dialer dials machines of rt for real and records which it tried.
func dialer(rt *Route, tried *[]string) func(int) (net.Conn, error) {
	d := &net.Dialer{Timeout: time.Second}
	return func(i int) (net.Conn, error) {
		*tried = append(*tried, rt.MachineID(i))
		return d.Dial("tcp", rt.MachineDial(i))
	}
}

// TestConnect: refused machines are skipped up to the failover attempts
// and left out for fail_duration; a forced instance allows no other.
func TestConnect(t *testing.T) {
	fd := 30 * time.Second
	t.Run("refused machines are skipped", func(t *testing.T) {
		rt := connectApp(t, &Failover{FailDuration: caddy.Duration(fd)}, nil, "000000000000b1")
		var tried []string
		start := time.Now()
		conn, i, release, err := rt.Connect(context.Background(), Preference{}, Failover{}, dialer(rt, &tried))
		if err != nil {
			t.Fatalf("Connect: %v (tried %v)", err, tried)
		}
		defer release()
		defer conn.Close()
		if id := rt.MachineID(i); id != "000000000000b1" || len(tried) != 3 {
			t.Fatalf("reached %s after trying %v, want 000000000000b1 after both iad machines", id, tried)
		}
		for _, id := range tried[:2] {
			m := rt.machines[rt.MachineIndex(id)]
			if m.available() {
				t.Errorf("%s refused but is still chosen", id)
			}
			until := time.Unix(0, m.health.failedUntil.Load())
			if d := until.Sub(start); d < fd || d > fd+5*time.Second {
				t.Errorf("%s left out for %s, want the fail_duration %s", id, d, fd)
			}
		}
		// the next connection goes straight to the machine that answers
		tried = nil
		conn2, _, release2, err := rt.Connect(context.Background(), Preference{}, Failover{}, dialer(rt, &tried))
		if err != nil {
			t.Fatal(err)
		}
		release2()
		_ = conn2.Close()
		if len(tried) != 1 || tried[0] != "000000000000b1" {
			t.Errorf("second connection tried %v, want only 000000000000b1", tried)
		}
	})
	t.Run("attempts bound the tries", func(t *testing.T) {
		rt := connectApp(t, &Failover{Attempts: 2}, nil, "000000000000b1")
		var tried []string
		_, _, _, err := rt.Connect(context.Background(), Preference{}, Failover{}, dialer(rt, &tried))
		if !errors.Is(err, ErrNoMachine) || len(tried) != 2 {
			t.Fatalf("err %v after trying %v, want ErrNoMachine after 2 machines", err, tried)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("err %v does not carry the dial error", err)
		}
	})
	t.Run("a handler's own bounds replace the app's", func(t *testing.T) {
		rt := connectApp(t, nil, nil, "000000000000b1")
		var tried []string
		_, _, _, err := rt.Connect(context.Background(), Preference{}, Failover{Attempts: 1}, dialer(rt, &tried))
		if !errors.Is(err, ErrNoMachine) || len(tried) != 1 {
			t.Fatalf("err %v after trying %v, want ErrNoMachine after 1 machine", err, tried)
		}
		if got := rt.Failover(); got.Attempts != DefaultFailoverAttempts || time.Duration(got.FailDuration) != DefaultFailDuration {
			t.Errorf("route's failover %+v, want the defaults", got)
		}
	})
	t.Run("a forced instance allows no other", func(t *testing.T) {
		rt := connectApp(t, nil, nil, "000000000000a2", "000000000000b1")
		var tried []string
		_, _, _, err := rt.Connect(context.Background(), Preference{ForceInstance: "000000000000a1"}, Failover{}, dialer(rt, &tried))
		if !errors.Is(err, ErrNoMachine) || len(tried) != 1 || tried[0] != "000000000000a1" {
			t.Fatalf("err %v after trying %v, want ErrNoMachine after 000000000000a1 only", err, tried)
		}
	})
	t.Run("all refuse", func(t *testing.T) {
		rt := connectApp(t, nil, nil)
		var tried []string
		_, _, _, err := rt.Connect(context.Background(), Preference{}, Failover{}, dialer(rt, &tried))
		if !errors.Is(err, ErrNoMachine) || len(tried) != 3 {
			t.Fatalf("err %v after trying %v, want ErrNoMachine after 3 machines", err, tried)
		}
		for i := range rt.NumMachines() {
			if rt.machines[i].available() {
				t.Errorf("%s refused but is still chosen", rt.MachineID(i))
			}
		}
	})
}

// TestConnectLimits: Connect honours the hard limit, waits in the queue
// for a slot, and takes none when its context is done (UDP's reader).
func TestConnectLimits(t *testing.T) {
	rt := connectApp(t, nil, &Concurrency{SoftLimit: 1, HardLimit: 1}, "000000000000a1", "000000000000a2", "000000000000b1")
	var tried []string
	var releases []func()
	for range 3 {
		conn, _, release, err := rt.Connect(context.Background(), Preference{}, Failover{}, dialer(rt, &tried))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		releases = append(releases, release)
	}
	for i := range rt.NumMachines() {
		if l := rt.Load(i); l != 1 {
			t.Fatalf("%s holds %d connections, want 1 each", rt.MachineID(i), l)
		}
	}
	if _, _, _, err := rt.Connect(context.Background(), Preference{}, Failover{}, dialer(rt, &tried)); !errors.Is(err, ErrAtHardLimit) {
		t.Fatalf("a fourth connection: %v, want ErrAtHardLimit after the queue timeout", err)
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if _, _, _, err := rt.Connect(done, Preference{}, Failover{}, dialer(rt, &tried)); !errors.Is(err, ErrAtHardLimit) {
		t.Fatalf("with a done context: %v, want ErrAtHardLimit", err)
	}
	if d := time.Since(start); d >= 200*time.Millisecond {
		t.Errorf("with a done context Connect waited %s, the whole queue timeout", d)
	}
	releases[0]()
	conn, _, release, err := rt.Connect(done, Preference{}, Failover{}, dialer(rt, &tried))
	if err != nil {
		t.Fatalf("after a release, with a done context: %v", err)
	}
	release()
	_ = conn.Close()
	for _, r := range releases[1:] {
		r()
	}
	for i := range rt.NumMachines() {
		if l := rt.Load(i); l != 0 {
			t.Errorf("%s holds %d connections after every release", rt.MachineID(i), l)
		}
	}
}

// TestFailoverConfig: the fly app's failover takes defaults and refuses
// negative bounds.
func TestFailoverConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    *Failover
		want Failover
		err  string
	}{
		{"defaults", nil, Failover{Attempts: 3, FailDuration: caddy.Duration(10 * time.Second)}, ""},
		{"set", &Failover{Attempts: 5, FailDuration: caddy.Duration(time.Minute)}, Failover{Attempts: 5, FailDuration: caddy.Duration(time.Minute)}, ""},
		{"negative attempts", &Failover{Attempts: -1}, Failover{}, "failover: attempts: -1 must not be negative"},
		{"negative fail_duration", &Failover{FailDuration: -1}, Failover{}, "failover: fail_duration: -1ns must not be negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &App{Failover: tc.f}
			err := provision(t, a)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if a.failover != tc.want {
				t.Errorf("failover %+v, want %+v", a.failover, tc.want)
			}
		})
	}
}

// TestConnectNoWaitKeepsMachine: a dial that fails while ctx is done (the
// client went away; UDP's reader, which may not wait and whose dial only
// opens a local socket) leaves the machine in selection for every
// protocol: the failure says nothing of it.
// TestConnectShortageKeepsMachine: a dial that fails because the edge
// ran out of descriptors leaves the machine in selection (it used to be
// left out for fail_duration, so a port whose tenant had exhausted the
// edge's descriptors stayed dead after they were back) and tries no
// other machine, which would fail the same way.
func TestConnectShortageKeepsMachine(t *testing.T) {
	rt := connectApp(t, nil, nil, "000000000000a1", "000000000000a2", "000000000000b1")
	var tried []string
	_, _, _, err := rt.Connect(context.Background(), Preference{}, Failover{}, func(i int) (net.Conn, error) {
		tried = append(tried, rt.MachineID(i))
		return nil, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", syscall.EMFILE)}
	})
	if !errors.Is(err, ErrNoMachine) || len(tried) != 1 {
		t.Fatalf("Connect: %v after trying %v; want ErrNoMachine after one machine", err, tried)
	}
	if m := rt.machines[rt.MachineIndex(tried[0])]; !m.available() {
		t.Errorf("%s is left out of selection after the edge ran out of descriptors", tried[0])
	}
}

// TestLocalShortageThroughDialError: Caddy's reverse proxy wraps a dial
// error in a DialError that does not unwrap; a shortage inside one is
// still a shortage, and the edge's own bound on machine connections is
// one.
func TestLocalShortageThroughDialError(t *testing.T) {
	emfile := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", syscall.EMFILE)}
	for _, err := range []error{emfile, reverseproxy.NewDialError(emfile), ErrDescriptors, fmt.Errorf("dial: %w", ErrDescriptors)} {
		if !LocalShortage(err) {
			t.Errorf("%v: not a local shortage", err)
		}
	}
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	if LocalShortage(reverseproxy.NewDialError(refused)) {
		t.Errorf("a refused connection is a local shortage")
	}
}

func TestConnectNoWaitKeepsMachine(t *testing.T) {
	rt := connectApp(t, nil, nil, "000000000000a1", "000000000000a2", "000000000000b1")
	done, cancel := context.WithCancel(context.Background())
	cancel()
	var tried []string
	_, _, _, err := rt.Connect(done, Preference{}, Failover{}, func(i int) (net.Conn, error) {
		tried = append(tried, rt.MachineID(i))
		return nil, errors.New("no route to the machine's address family")
	})
	if !errors.Is(err, ErrNoMachine) || len(tried) != 1 {
		t.Fatalf("Connect: %v after trying %v; want ErrNoMachine after one machine", err, tried)
	}
	if m := rt.machines[rt.MachineIndex(tried[0])]; !m.available() {
		t.Errorf("%s is left out of selection after a failure on the edge's side", tried[0])
	}
}
