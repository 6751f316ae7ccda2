// The connection pool a Storage shares with every config that names the
// same database and table (db): the table, created on first use, and the
// one connection that LISTENs for stored keys and released locks and fans
// them out to subscribers.

package pgstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
)

// db is a connection pool and its table, shared by the configs that use
// them.
type db struct {
	pool    *pgxpool.Pool
	table   string
	logger  *zap.Logger
	timeout time.Duration // the connection timeout

	mu      sync.Mutex
	created bool

	subsMu   sync.Mutex
	subs     map[chan string]bool // keys stored
	lockSubs map[chan string]bool // locks released
	stop     context.CancelFunc   // ends the listener, once started
	done     chan struct{}
}

// Destruct closes the pool.
func (d *db) Destruct() error {
	d.subsMu.Lock()
	stop, done := d.stop, d.done
	d.subsMu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
	d.pool.Close()
	return nil
}

// subscribe returns a channel that receives the keys stored by any edge
// on this table (PostgreSQL's NOTIFY, sent by Store in the same
// statement), and a function that ends the subscription. A subscriber
// that falls behind misses keys: it must treat a key as "something
// changed", not as the list of changes.
func (d *db) subscribe() (<-chan string, func()) { return d.subscribeTo(&d.subs) }

// subscribeLocks is subscribe for the names of released locks.
func (d *db) subscribeLocks() (<-chan string, func()) { return d.subscribeTo(&d.lockSubs) }

func (d *db) subscribeTo(subs *map[chan string]bool) (<-chan string, func()) {
	ch := make(chan string, 64)
	d.subsMu.Lock()
	defer d.subsMu.Unlock()
	if *subs == nil {
		*subs = make(map[chan string]bool)
	}
	(*subs)[ch] = true
	if d.stop == nil {
		ctx, stop := context.WithCancel(context.Background())
		d.stop, d.done = stop, make(chan struct{})
		go d.listen(ctx)
	}
	return ch, func() {
		d.subsMu.Lock()
		defer d.subsMu.Unlock()
		delete(*subs, ch)
	}
}

// listenCheck is how long the listening connection may stay quiet
// before the listener checks that the database still answers on it.
var listenCheck = 10 * time.Second

// listen holds a connection that LISTENs on the table's channel and fans
// the notifications out, reconnecting after a failure.
func (d *db) listen(ctx context.Context) {
	defer close(d.done)
	for ctx.Err() == nil {
		err := d.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if d.logger != nil {
			d.logger.Warn("listening for storage changes; trying again in 1s", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (d *db) listenOnce(ctx context.Context) error {
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `LISTEN "`+d.table+`"; LISTEN "`+d.table+`_l"`); err != nil {
		return err
	}
	// what changed while no one listened
	d.fanOut(d.subs, "")
	d.fanOut(d.lockSubs, "")
	for {
		wait, cancel := context.WithTimeout(ctx, listenCheck)
		n, err := conn.Conn().WaitForNotification(wait)
		cancel()
		if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			// quiet for a while: is the database still there? A connection
			// it forgot (it restarted, or the network dropped its state
			// during an outage) would otherwise wait for ever
			timeout := d.timeout
			if timeout <= 0 {
				timeout = 5 * time.Second
			}
			ping, cancel := context.WithTimeout(ctx, timeout)
			err = conn.Ping(ping)
			cancel()
			if err == nil {
				continue
			}
		}
		if err != nil {
			closing, cancel := context.WithTimeout(context.Background(), time.Second)
			conn.Conn().Close(closing) // do not return a listening connection to the pool
			cancel()
			return err
		}
		if n.Channel == d.table+"_l" {
			d.fanOut(d.lockSubs, n.Payload)
		} else {
			d.fanOut(d.subs, n.Payload)
		}
	}
}

func (d *db) fanOut(subs map[chan string]bool, key string) {
	d.subsMu.Lock()
	defer d.subsMu.Unlock()
	for ch := range subs {
		select {
		case ch <- key:
		default: // it has changes to read already
		}
	}
}

// ready creates the table if need be (once it worked). The statement
// runs outside the mutex, so that a caller whose context ends gives up
// at once instead of queueing behind another caller's statement on a
// silent database: creating the table twice at once is harmless.
func (d *db) ready(ctx context.Context) error {
	d.mu.Lock()
	created := d.created
	d.mu.Unlock()
	if created {
		return nil
	}
	_, err := d.pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+d.table+` (
		kind     text        NOT NULL,
		key      text        NOT NULL,
		value    bytea,
		modified timestamptz NOT NULL DEFAULT now(),
		owner    text,
		expires  timestamptz,
		PRIMARY KEY (kind, key)
	)`)
	if err != nil {
		var pe interface{ SQLState() string }
		// two edges creating it at once: the loser sees a unique violation
		if !errors.As(err, &pe) || pe.SQLState() != "23505" {
			return fmt.Errorf("creating table %s: %w", d.table, err)
		}
	}
	d.mu.Lock()
	d.created = true
	d.mu.Unlock()
	return nil
}
