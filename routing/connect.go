package routing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// The way to a machine, for every protocol: a route's Connect chooses a
// machine (client preferences, concurrency limits and their queue),
// dials it with the caller's dial function, and on failure leaves the
// machine out for fail_duration and moves on to the next choice, up to
// the fly app's failover attempts. transport fly cannot dial itself
// (Caddy's HTTP transport does), so it walks the same steps with
// tries.next between round trips: one policy, one set of bounds.

// Default failover bounds (the fly app's failover).
const (
	DefaultFailoverAttempts = 3
	DefaultFailDuration     = 10 * time.Second
)

// ErrNoMachine means that no machine of the app could be reached.
var ErrNoMachine = errors.New("no machine of the app can be reached")

// ErrAtHardLimit means that every machine of the app stayed at its
// concurrency hard limit for the queue timeout.
var ErrAtHardLimit = errors.New("every machine of the app is at its concurrency hard limit")

// Failover bounds how a request or connection moves on to the next
// machine when one does not take it (refuses the connection, does not
// accept it in time, or answers a UDP datagram with ICMP port
// unreachable).
type Failover struct {
	// How many machines one request or connection may try.
	// Default: 3
	Attempts int `json:"attempts,omitempty"`

	// How long a machine that did not take a connection is left out of
	// selection, for every request and connection of its service.
	// Default: 10s
	FailDuration caddy.Duration `json:"fail_duration,omitempty"`
}

// fill checks the bounds and fills the defaults.
func (f *Failover) fill() error {
	if f.Attempts < 0 {
		return fmt.Errorf("attempts: %d must not be negative", f.Attempts)
	}
	if f.FailDuration < 0 {
		return fmt.Errorf("fail_duration: %s must not be negative", time.Duration(f.FailDuration))
	}
	if f.Attempts == 0 {
		f.Attempts = DefaultFailoverAttempts
	}
	if f.FailDuration == 0 {
		f.FailDuration = caddy.Duration(DefaultFailDuration)
	}
	return nil
}

// Failover returns the failover bounds of the route: the fly app's.
func (rt *Route) Failover() Failover { return rt.failover }

// Connect connects to a machine of the route for one connection: the
// machine Acquire chooses for pref (among the machines below the
// service's hard limit, waiting in the queue while every one is at it),
// reached with dial(i). When dial fails, the machine is left out of
// selection for the fail duration and the next choice is tried, up to
// the failover attempts; a forced instance allows no other. Fields of
// over that are set replace the fly app's failover bounds (a handler's
// own, deprecated, options); pass Failover{} for the app's.
//
// ctx bounds the whole: the wait in the queue and the moving on. When
// ctx is already done, Connect takes a machine only if one has room now
// (it does not join the queue), and after a failure tries no other and
// leaves the machine in selection (UDP's reader, which may not wait).
//
// It returns the connection, the machine's index and a release func to
// call when the connection ends (it gives back the machine's unit of
// load, as rt.Release(i) does). Its error wraps ErrAtHardLimit when the
// machines stayed full for the queue timeout, else ErrNoMachine with the
// last dial error.
func (rt *Route) Connect(ctx context.Context, pref Preference, over Failover, dial func(i int) (net.Conn, error)) (net.Conn, int, func(), error) {
	t := rt.newTries(over)
	choose := func(p *tries) (int, Outcome) {
		if ctx.Err() != nil {
			return -1, Refused // the client went away, or may not wait
		}
		return Acquire(ctx, rt, p, pref)
	}
	i, outcome := Acquire(ctx, rt, t, pref)
	rt.countSelection(outcome)
	var lastErr error
	for i >= 0 {
		conn, err := dial(i)
		if err == nil {
			return conn, i, func() { rt.Release(i) }, nil
		}
		rt.Release(i)
		lastErr = fmt.Errorf("machine %s (%s): %w", rt.machines[i].id, rt.machines[i].dial, err)
		if ctx.Err() != nil || LocalShortage(err) {
			// the client went away, or may not wait (UDP's reader, whose
			// dial only opens a local socket), or the edge itself ran
			// short: the failure says nothing of the machine, which stays
			// in selection for every protocol (and another would fail the
			// same way)
			outcome = Refused
			rt.countSelection(outcome)
			break
		}
		i, outcome = t.next(i, choose)
	}
	switch {
	case outcome == AtHardLimit && lastErr != nil:
		return nil, -1, nil, fmt.Errorf("app %s: %w (waited up to %s): %w", rt.App, ErrAtHardLimit, rt.queueTimeout, lastErr)
	case outcome == AtHardLimit:
		return nil, -1, nil, fmt.Errorf("app %s: %w (waited up to %s)", rt.App, ErrAtHardLimit, rt.queueTimeout)
	case lastErr != nil:
		return nil, -1, nil, fmt.Errorf("app %s: %w: %w", rt.App, ErrNoMachine, lastErr)
	}
	return nil, -1, nil, fmt.Errorf("app %s: %w", rt.App, ErrNoMachine)
}

// LocalShortage tells whether a dial failed for want of something on the
// edge itself: descriptors (EMFILE, ENFILE, or ErrDescriptors: the
// edge's own bound), buffers or memory, local ports (EADDRNOTAVAIL).
// Such a failure says nothing of the machine. Caddy's reverse proxy
// wraps a dial's error in a DialError that does not unwrap, so its text
// is read too (an errno's text is fixed).
func LocalShortage(err error) bool {
	if errors.Is(err, ErrDescriptors) {
		return true
	}
	for _, errno := range localShortages {
		if errors.Is(err, errno) {
			return true
		}
	}
	if !isDialError(err) {
		return false
	}
	msg := err.Error()
	if strings.Contains(msg, ErrDescriptors.Error()) {
		return true
	}
	for _, errno := range localShortages {
		if strings.Contains(msg, errno.Error()) {
			return true
		}
	}
	return false
}

var localShortages = []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL}

// tries is one request's or connection's way through the route's
// machines after a failure: the machines it tried (a Pool without them),
// and how many more it may try.
type tries struct {
	rt     *Route
	tried  []bool
	left   int
	failed time.Duration
}

// newTries starts a request's or connection's failover with the route's
// bounds, or over's where set.
func (rt *Route) newTries(over Failover) *tries {
	f := rt.failover
	if over.Attempts > 0 {
		f.Attempts = over.Attempts
	}
	if over.FailDuration > 0 {
		f.FailDuration = over.FailDuration
	}
	return &tries{rt: rt, tried: make([]bool, len(rt.machines)), left: f.Attempts, failed: time.Duration(f.FailDuration)}
}

func (t *tries) Usable(i int) bool { return !t.tried[i] }
func (t *tries) Load(int) int      { return 0 }

// next is the step after machine i did not take the request or
// connection: i is left out of selection for the fail duration and not
// tried again, and choose picks the next machine among the others (with
// the caller's limits and queue), unless the attempts are used up. The
// outcome is counted; when no machine is left it is Refused, or the
// reason the choice gave (a forced instance, the hard limit).
func (t *tries) next(i int, choose func(*tries) (int, Outcome)) (int, Outcome) {
	t.tried[i] = true
	t.rt.machines[i].health.failedUntil.Store(time.Now().Add(t.failed).UnixNano())
	t.left--
	if t.left <= 0 {
		t.rt.countSelection(Refused)
		return -1, Refused
	}
	j, outcome := choose(t)
	if j < 0 && outcome == NoneAvailable {
		outcome = Refused
	}
	t.rt.countSelection(outcome)
	return j, outcome
}
