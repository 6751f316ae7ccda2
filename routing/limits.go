package routing

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Concurrency limits, as Fly.io's proxy applies them: each machine of a
// service counts its load (in-flight requests, or open connections), a
// machine at or above soft_limit is chosen only when no machine below it
// can be, and a machine at hard_limit gets no new work. A request or
// connection that finds every machine it may go to at hard_limit waits
// in the service's queue, up to the fly app's queue_timeout, for one of
// them to finish something.
//
// The count is taken with a compare-and-swap against the hard limit, so
// two requests that chose the same machine at once cannot both take its
// last slot.

// DefaultQueueTimeout is how long a request or connection waits for a
// machine below its hard limit when the fly app's queue_timeout is not
// set.
const DefaultQueueTimeout = 5 * time.Second

// MaxQueued is how many requests and connections may wait at once for
// one service's machines; more are refused at once. It bounds what one
// app's clients can hold of the edge while its machines are full.
const MaxQueued = 1024

// queuePoll is how often a waiter looks again without being woken: a
// slot freed through a route of an older config (before a reload or a
// change of the app) wakes that route's waiters only.
const queuePoll = 100 * time.Millisecond

// slotQueue wakes the requests waiting for a service's machines when one
// of them finishes something.
type slotQueue struct {
	waiting atomic.Int32
	mu      sync.Mutex
	ch      chan struct{} // closed on the next release; nil when nobody took it
}

// next returns a channel closed at the next release.
func (q *slotQueue) next() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.ch == nil {
		q.ch = make(chan struct{})
	}
	return q.ch
}

// wake tells every waiter to look again.
func (q *slotQueue) wake() {
	if q.waiting.Load() == 0 {
		return
	}
	q.mu.Lock()
	if q.ch != nil {
		close(q.ch)
		q.ch = nil
	}
	q.mu.Unlock()
}

// tryAcquire counts one more unit of load on m unless that would reach
// above hard (0: no limit).
func (m *machine) tryAcquire(hard int) bool {
	c := &m.health.conns
	if hard <= 0 {
		c.Add(1)
		return true
	}
	for {
		n := c.Load()
		if n >= int64(hard) {
			return false
		}
		if c.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Release gives back the unit of load that Acquire took on machine i.
func (rt *Route) Release(i int) {
	rt.machines[i].health.conns.Add(-1)
	rt.queue.wake()
}

// Load returns machine i's current load: its requests in flight for
// type requests, its open connections otherwise.
func (rt *Route) Load(i int) int { return int(rt.machines[i].health.conns.Load()) }

// CountsConnections tells whether the service's concurrency type is
// connections (Fly.io's default) rather than requests. On HTTP, a
// request then holds its own connection to the machine, closed when the
// response ends, so the machine's open connections are what is counted.
func (rt *Route) CountsConnections() bool {
	c := rt.Service.Concurrency
	return c != nil && c.Type != "requests"
}

// limited is a pool that leaves out the machines at the hard limit and
// measures load by the edge's own count.
type limited[P Pool] struct {
	p    P
	rt   *Route
	hard int64
}

func (l limited[P]) Usable(i int) bool {
	return l.p.Usable(i) && (l.hard <= 0 || l.rt.machines[i].health.conns.Load() < l.hard)
}
func (l limited[P]) Load(i int) int { return int(l.rt.machines[i].health.conns.Load()) }

// SelectUnderLimits is Select among the machines below the service's
// hard limit, with their load as the edge counts it. When it chooses
// none, full tells whether the hard limit is what stopped it: Select
// without the limit would have chosen a machine, so the request may wait
// for one (Acquire).
func SelectUnderLimits[P Pool](rt *Route, p P, pref Preference) (i int, outcome Outcome, full bool) {
	hard := rt.HardLimit()
	i, outcome = Select(rt, limited[P]{p, rt, int64(hard)}, pref)
	if i >= 0 || hard <= 0 || outcome == ForcedUnknown {
		return i, outcome, false
	}
	j, _ := Select(rt, p, pref)
	return i, outcome, j >= 0
}

// Acquire chooses a machine of the route as Select does, among the
// machines of p below the service's hard limit, and counts the request or
// connection on it: Release gives it back. When every machine that could
// be chosen is at its hard limit, it waits for one until the fly app's
// queue_timeout or ctx ends, and then fails with AtHardLimit. It never
// waits for machines that are down.
func Acquire[P Pool](ctx context.Context, rt *Route, p P, pref Preference) (int, Outcome) {
	hard := rt.HardLimit()
	lp := limited[P]{p, rt, int64(hard)}
	for range len(rt.machines) + 1 {
		i, outcome, full := SelectUnderLimits(rt, p, pref)
		if i >= 0 {
			if rt.machines[i].tryAcquire(hard) {
				return i, outcome
			}
			continue // another request took the last slot: choose again
		}
		if !full {
			return -1, outcome
		}
		break
	}
	if ctx.Err() != nil {
		return -1, AtHardLimit // may not wait: no place in the queue taken from those who may
	}
	q := &rt.queue
	if q.waiting.Add(1) > MaxQueued {
		q.waiting.Add(-1)
		return -1, AtHardLimit
	}
	defer q.waiting.Add(-1)
	timeout := time.NewTimer(rt.queueTimeout)
	defer timeout.Stop()
	poll := time.NewTicker(queuePoll)
	defer poll.Stop()
	for {
		woken := q.next()
		if i, outcome := Select(rt, lp, pref); i >= 0 {
			if rt.machines[i].tryAcquire(hard) {
				return i, outcome
			}
			continue
		}
		if j, outcome := Select(rt, p, pref); j < 0 {
			return -1, outcome // the machines went down while we waited
		}
		select {
		case <-woken:
		case <-poll.C:
		case <-timeout.C:
			return -1, AtHardLimit
		case <-ctx.Done():
			return -1, AtHardLimit
		}
	}
}

// chooseFor picks a machine of rt for request r among p. When the
// service has concurrency limits, it takes a unit of the machine's load
// (waiting in the queue when every machine is at its hard limit) and
// holds it until r ends. The slot r held before (a failover, a retry, a
// replay) is given back first, so r never waits for itself. For type
// connections, r then closes its connection to the machine when its
// response ends.
func chooseFor[P Pool](r *http.Request, rt *Route, p P, pref Preference) (int, Outcome) {
	if rt.Service.Concurrency == nil {
		return Select(rt, p, pref)
	}
	st := ensureState(r)
	st.releaseSlot()
	i, outcome := Acquire(r.Context(), rt, p, pref)
	if i < 0 {
		return i, outcome
	}
	st.holdSlot(r.Context(), rt, i)
	if rt.CountsConnections() {
		r.Close = true
	}
	return i, outcome
}

// AllMachines is a pool that adds nothing to the edge's own view: every
// machine its health allows may be chosen.
type AllMachines struct{}

func (AllMachines) Usable(int) bool { return true }
func (AllMachines) Load(int) int    { return 0 }

// TryAcquire takes a unit of machine i's load unless it is at the
// service's hard limit (see Acquire); Release gives it back.
func (rt *Route) TryAcquire(i int) bool { return rt.machines[i].tryAcquire(rt.HardLimit()) }
