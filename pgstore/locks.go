// The store's locks (certmagic.Locker and TryLocker): leases in the table,
// renewed while held and taken over when they run out.

package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

type lease struct {
	owner string
	stop  context.CancelFunc
	done  chan struct{}
}

// Lock implements certmagic.Locker: it takes the lock when it is free or
// its lease ran out, trying again when a holder releases a lock (Unlock
// notifies) or every lock_poll until then (a lease that runs out tells
// no one), until ctx ends; it renews the lease while it holds it.
func (s *store) Lock(ctx context.Context, name string) error {
	var released <-chan string
	for {
		ok, err := s.TryLock(ctx, name)
		if err != nil || ok {
			return err
		}
		if released == nil {
			ch, unsubscribe := s.db.subscribeLocks()
			defer unsubscribe()
			released = ch
			continue // released between the try and the subscription?
		}
		timer := time.NewTimer(s.poll)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		case <-released:
			timer.Stop()
		}
	}
}

// TryLock implements certmagic.TryLocker.
func (s *store) TryLock(ctx context.Context, name string) (bool, error) {
	owner := newOwner()
	rows, err := s.query(ctx, `INSERT INTO $table (kind, key, owner, expires, modified)
		VALUES ('l', $1, $2, now() + $3 * interval '1 millisecond', now())
		ON CONFLICT (kind, key) DO UPDATE SET owner = excluded.owner, expires = excluded.expires, modified = now()
		WHERE $table.expires < now()
		RETURNING owner`, name, owner, s.lease.Milliseconds())
	if err != nil {
		return false, err
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(got) == 0 {
		return false, err
	}
	renewCtx, stop := context.WithCancel(context.Background())
	l := &lease{owner: owner, stop: stop, done: make(chan struct{})}
	s.mu.Lock()
	if s.held == nil {
		s.held = make(map[string]*lease)
	}
	s.held[name] = l
	s.mu.Unlock()
	go s.renew(renewCtx, name, l)
	return true, nil
}

// renew keeps the lease of a held lock until Unlock.
func (s *store) renew(ctx context.Context, name string, l *lease) {
	defer close(l.done)
	t := time.NewTicker(s.lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			rctx, cancel := context.WithTimeout(ctx, s.lease/3)
			err := s.exec(rctx, `UPDATE $table SET expires = now() + $3 * interval '1 millisecond' WHERE kind = 'l' AND key = $1 AND owner = $2`, name, l.owner, s.lease.Milliseconds())
			cancel()
			if err != nil && ctx.Err() == nil {
				s.logger.Warn("renewing a storage lock", zap.String("lock", name), zap.Error(err))
			}
		}
	}
}

// Unlock implements certmagic.Locker.
func (s *store) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	l := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if l == nil {
		return fmt.Errorf("lock %s is not held by this storage", name)
	}
	l.stop()
	<-l.done
	return s.exec(ctx, `WITH released AS (DELETE FROM $table WHERE kind = 'l' AND key = $1 AND owner = $2 RETURNING key)
		SELECT pg_notify('$table_l', key) FROM released`, name, l.owner)
}

func newOwner() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
