package routing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// ErrNoMachine means that no machine of the app could be reached.
var ErrNoMachine = errors.New("no machine of the app can be reached")

// ErrAtHardLimit means that every machine of the app stayed at its
// concurrency hard limit for the queue timeout.
var ErrAtHardLimit = errors.New("every machine of the app is at its concurrency hard limit")

// DialMachine connects to a machine of the route for one connection:
// the nearest healthy one below the service's hard limit (as Acquire
// chooses without client preferences, waiting in the queue when every
// machine is at its hard limit); when a dial fails, the machine is left
// out of selection for failDuration and the next choice is tried, up to
// tries machines. The returned release func must be called when the
// connection ends; it gives back the machine's unit of load.
func (rt *Route) DialMachine(ctx context.Context, dialer *net.Dialer, tries int, failDuration time.Duration) (net.Conn, int, func(), error) {
	var lastErr error
	pool := failover{tried: make([]bool, len(rt.machines))}
	for range max(tries, 1) {
		i, outcome := Acquire(ctx, rt, pool, Preference{})
		if i < 0 {
			if lastErr == nil {
				rt.countSelection(outcome)
				if outcome == AtHardLimit {
					return nil, -1, nil, fmt.Errorf("app %s: %w (waited up to %s)", rt.App, ErrAtHardLimit, rt.queueTimeout)
				}
			}
			break
		}
		rt.countSelection(outcome)
		m := rt.machines[i]
		conn, err := dialer.DialContext(ctx, "tcp", m.dial)
		if err == nil {
			return conn, i, func() { rt.Release(i) }, nil
		}
		rt.Release(i)
		pool.tried[i] = true
		m.health.failedUntil.Store(time.Now().Add(failDuration).UnixNano())
		lastErr = fmt.Errorf("machine %s (%s): %w", m.id, m.dial, err)
		if ctx.Err() != nil {
			break
		}
	}
	if lastErr == nil {
		return nil, -1, nil, fmt.Errorf("app %s: %w", rt.App, ErrNoMachine)
	}
	rt.countSelection(Refused)
	return nil, -1, nil, fmt.Errorf("app %s: %w: %w", rt.App, ErrNoMachine, lastErr)
}
