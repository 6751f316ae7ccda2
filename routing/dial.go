package routing

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"
)

// connPool is the edge's own view of a route's machines for layer 4:
// every machine the edge's health allows is usable, and its load is its
// connections in flight.
type connPool struct{ rt *Route }

func (p connPool) Usable(i int) bool {
	m := p.rt.machines[i]
	if c := p.rt.Service.Concurrency; c != nil && c.HardLimit > 0 && m.health.conns.Load() >= int64(c.HardLimit) {
		return false
	}
	return true
}

func (p connPool) Load(i int) int { return int(p.rt.machines[i].health.conns.Load()) }

// ErrNoMachine means that no machine of the app could be reached.
var ErrNoMachine = errors.New("no machine of the app can be reached")

// DialMachine connects to a machine of the route for one connection:
// the nearest healthy one (as Select chooses without client preferences);
// when a dial fails, the machine is left out of selection for
// failDuration and the next choice is tried, up to tries machines. The
// returned release func must be called when the connection ends; it
// keeps the machine's count of connections in flight.
func (rt *Route) DialMachine(ctx context.Context, dialer *net.Dialer, tries int, failDuration time.Duration) (net.Conn, int, func(), error) {
	var lastErr error
	for range max(tries, 1) {
		i, outcome := Select(rt, connPool{rt}, Preference{})
		if i < 0 {
			if lastErr == nil {
				rt.countSelection(outcome)
			}
			break
		}
		rt.countSelection(outcome)
		m := rt.machines[i]
		m.health.conns.Add(1)
		conn, err := dialer.DialContext(ctx, "tcp", m.dial)
		if err == nil {
			return conn, i, func() { m.health.conns.Add(-1) }, nil
		}
		m.health.conns.Add(-1)
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
