package ipalloc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Layout in Caddy's storage:
//
//	fly/state/snapshot        every record as of a sequence number
//	fly/state/log/<seq>       one change (puts and deletes) per number
//
// A change is durable once its log entry is stored; entries are written
// one after the other under the storage lock, each in one atomic Store,
// so a reader that loads entry n+1, n+2, ... until one is missing has a
// consistent state, lock or no lock. Every compactEvery entries the
// state is written to the snapshot, and entries older than one more
// interval are deleted (a node further behind reloads the snapshot).
const (
	storagePrefix = "fly/state"
	snapshotKey   = storagePrefix + "/snapshot"
	logPrefix     = storagePrefix + "/log"
	lockName      = "fly_state"
)

var (
	compactEvery = uint64(1024)
	pollInterval = 500 * time.Millisecond
	// defaultTimeout is how long a change may wait for a storage that
	// does not say how long (see storageTimeout).
	defaultTimeout = 60 * time.Second
)

// timeoutStorage is a storage that says how long an operation may wait
// for it before it is taken as unreachable: caddy.storage.postgres, its
// connection timeout.
type timeoutStorage interface {
	Timeout() time.Duration
}

// storageTimeout is how long a change may take on storage, from its
// request to its answer: the storage's own timeout when it has one, else
// defaultTimeout.
func storageTimeout(storage certmagic.Storage) time.Duration {
	if ts, ok := storage.(timeoutStorage); ok && ts.Timeout() > 0 {
		return ts.Timeout()
	}
	return defaultTimeout
}

func logKey(seq uint64) string { return fmt.Sprintf("%s/%016d", logPrefix, seq) }

type entry struct {
	Seq  uint64                     `json:"seq"`
	Puts map[string]json.RawMessage `json:"puts,omitempty"`
	Dels []string                   `json:"dels,omitempty"`
}

type snapshot struct {
	Seq     uint64                     `json:"seq"`
	Records map[string]json.RawMessage `json:"records"`
}

// store keeps the state in memory, in step with Caddy's storage, which
// several edges may share. It lives in a UsagePool, so config reloads
// keep it.
type store struct {
	storage certmagic.Storage
	logger  *zap.Logger
	// timeout bounds a change from its request to its answer
	// (storageTimeout), and each read of other edges' changes (with 10 s
	// at most)
	timeout time.Duration

	mu      sync.RWMutex // guards st
	st      *state
	seq     uint64 // the last entry applied; touched only by the loop
	snapSeq uint64
	snapMod time.Time

	reqs    chan *request
	quit    chan struct{}
	done    chan struct{}
	started sync.Once

	// onChange is told which apps changed (nil: all apps); the commit
	// calls it before it acknowledges the change.
	onChange atomic.Pointer[func(apps map[string]bool)]

	// changes tells of keys stored by any edge, on a storage that pushes
	// them (caddy.storage.postgres); nil otherwise, and the poll alone
	// finds other edges' changes.
	changes     <-chan string
	unsubscribe func()
}

// changeNotifier is a storage that tells when keys are stored, by this
// edge or another (caddy.storage.postgres, with PostgreSQL's
// LISTEN/NOTIFY). A key means "something changed"; keys may be dropped.
type changeNotifier interface {
	SubscribeChanges() (<-chan string, func())
}

// request is a change waiting for the committer.
type request struct {
	fn       func(*txn) error
	done     chan error
	deadline time.Time    // when its caller is answered at the latest
	state    atomic.Int32 // queued, taken or abandoned
}

// A request is queued until the committer takes it or its caller gives
// up on it (its deadline passed, or the caller left), whichever comes
// first: a request given up on is never run, so the 503 its caller got
// ("nothing changed") is true.
const (
	queued int32 = iota
	taken
	abandoned
)

// txn is one change as it is being made: reads see the state before the
// change (and what the change applied to it early, see applyPuts),
// writes are collected and applied only if fn succeeds.
type txn struct {
	st      *state
	now     time.Time
	puts    map[string]json.RawMessage
	dels    []string
	order   []string // keys of puts, in order
	applied int      // how many of order applyPuts applied
	// what the keys the change applied to st held before (nil: absent),
	// recorded before the change first touched them, so that undo
	// restores the state as it was
	prior   map[string]json.RawMessage
	undos   []func()        // what else to restore on undo, in the reverse order
	changed map[string]bool // the apps whose state the change touched
}

func (t *txn) put(key string, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if t.puts == nil {
		t.puts = make(map[string]json.RawMessage)
	}
	if _, ok := t.puts[key]; !ok {
		t.order = append(t.order, key)
	}
	t.puts[key] = raw
	return nil
}

func (t *txn) del(key string) { t.dels = append(t.dels, key) }

// apply puts raw under key in the state (nil deletes it), recording
// first what the key held.
func (t *txn) apply(key string, raw json.RawMessage) error {
	if _, ok := t.prior[key]; !ok {
		if t.prior == nil {
			t.prior = make(map[string]json.RawMessage)
		}
		t.prior[key] = t.st.records[key] // nil when absent
	}
	return t.st.apply(key, raw, t.changed)
}

// applyPuts applies the puts made so far to the state, so that later
// reads of the same change see them (a change that makes several
// allocations); the commit applies the rest, and undoes all of it if
// the change fails or cannot be stored.
func (t *txn) applyPuts() error {
	for ; t.applied < len(t.order); t.applied++ {
		k := t.order[t.applied]
		if err := t.apply(k, t.puts[k]); err != nil {
			return err
		}
	}
	return nil
}

// applyAll applies the whole change to the state: its deletes, then
// its puts.
func (t *txn) applyAll() error {
	for _, k := range t.dels {
		if err := t.apply(k, nil); err != nil {
			return err
		}
	}
	t.applied = 0 // a put applied early is applied again after the deletes: harmless
	return t.applyPuts()
}

// onUndo has fn run if the change is undone (refused, or not stored):
// for what a change moves outside the state, such as a pool's cursor.
func (t *txn) onUndo(fn func()) { t.undos = append(t.undos, fn) }

// undo restores in the state what the change applied to it.
func (t *txn) undo(logger *zap.Logger) {
	for k, old := range t.prior {
		if err := t.st.apply(k, old, t.changed); err != nil {
			logger.Error("undoing a change in memory", zap.String("key", k), zap.Error(err))
		}
	}
	for i := len(t.undos) - 1; i >= 0; i-- {
		t.undos[i]()
	}
}

func openStore(ctx context.Context, storage certmagic.Storage, logger *zap.Logger) (*store, error) {
	s := &store{
		storage: storage,
		logger:  logger,
		timeout: storageTimeout(storage),
		st:      newState(),
		reqs:    make(chan *request, 1024),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	if _, err := s.catchUp(ctx); err != nil {
		return nil, fmt.Errorf("loading the IP state from %v: %w", storage, err)
	}
	return s, nil
}

// start starts the loop that commits changes and follows the storage;
// calls after the first do nothing. (Provision only loads: `caddy
// validate` provisions without starting.)
func (s *store) start() {
	s.started.Do(func() {
		if n, ok := s.storage.(changeNotifier); ok {
			s.changes, s.unsubscribe = n.SubscribeChanges()
		}
		go s.loop()
	})
}

// Destruct stops the store's loop.
func (s *store) Destruct() error {
	close(s.quit)
	s.started.Do(func() { close(s.done) }) // never started
	<-s.done
	if s.unsubscribe != nil {
		s.unsubscribe()
	}
	return nil
}

// read runs fn with the state read-locked.
func (s *store) read(fn func(*state)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	fn(s.st)
}

// do makes a change: fn runs under the storage lock, on the state as all
// edges sharing the storage left it; when do returns nil the change is
// durable. It returns within the store's timeout: a change the committer
// has not taken by then (the storage is silent, or busy with earlier
// changes) is given up, never run, and answered Unavailable; one it has
// taken is committed by then or fails (the commit's deadline is the
// earliest of its requests').
func (s *store) do(ctx context.Context, fn func(*txn) error) error {
	r := &request{fn: fn, done: make(chan error, 1), deadline: time.Now().Add(s.timeout)}
	timer := time.NewTimer(s.timeout)
	defer timer.Stop()
	select {
	case s.reqs <- r:
	case <-s.quit:
		return errors.New("the IP store is shutting down")
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return s.late()
	}
	select {
	case err := <-r.done:
		return err
	case <-s.quit:
		if r.state.CompareAndSwap(queued, abandoned) {
			return errors.New("the IP store is shutting down")
		}
	case <-ctx.Done():
		if r.state.CompareAndSwap(queued, abandoned) {
			return ctx.Err()
		}
	case <-timer.C:
		if r.state.CompareAndSwap(queued, abandoned) {
			return s.late()
		}
	}
	// taken: the commit answers by the request's deadline; a commit that
	// does not (a panic outside the change) leaves the outcome unknown
	grace := time.NewTimer(s.timeout)
	defer grace.Stop()
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-grace.C:
		return errors.New("the IP store took the change and did not answer; whether it was stored is unknown")
	}
}

// late is the refusal of a change the committer did not take within the
// store's timeout.
func (s *store) late() error {
	return unavailable("no answer from the storage within %v (it is unreachable, or busy with earlier changes)", s.timeout)
}

// loop commits requests in batches (one lock and one storage write for
// all the requests that queued meanwhile) and polls for other edges'
// changes in between.
func (s *store) loop() {
	defer close(s.done)
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case r := <-s.reqs:
			batch := []*request{r}
		drain:
			for len(batch) < 1024 {
				select {
				case r := <-s.reqs:
					batch = append(batch, r)
				default:
					break drain
				}
			}
			s.safely("committing IP state changes", func() { s.commit(batch) })
		case key := <-s.changes:
			if key != "" && !strings.HasPrefix(key, storagePrefix+"/") {
				continue // a certificate, a lock: not the state
			}
			s.safely("reading IP state changes", s.follow)
		case <-t.C:
			s.safely("reading IP state changes", s.follow)
		}
	}
}

// follow applies what other edges stored since this one last looked.
func (s *store) follow() {
	ctx, cancel := context.WithTimeout(context.Background(), min(s.timeout, 10*time.Second))
	defer cancel()
	changed, err := s.catchUp(ctx)
	if err != nil {
		s.logger.Error("reading IP state changes from storage", zap.Error(err))
	}
	s.notify(changed)
}

// safely runs fn, logging a panic instead of ending the process; the
// loop then goes on (a failed commit has answered its requests or will
// time them out on their contexts).
func (s *store) safely(what string, fn func()) {
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("panic "+what, zap.Any("panic", r), zap.Stack("stack"))
		}
	}()
	fn()
}

func (s *store) notify(changed map[string]bool) {
	if len(changed) == 0 {
		return
	}
	if f := s.onChange.Load(); f != nil {
		(*f)(changed)
	}
}

// commit runs a batch of requests as one change, by the earliest
// deadline of its requests; requests whose callers gave up are left out.
func (s *store) commit(all []*request) {
	var batch []*request
	var deadline time.Time
	for _, r := range all {
		if !r.state.CompareAndSwap(queued, taken) {
			continue
		}
		batch = append(batch, r)
		if deadline.IsZero() || r.deadline.Before(deadline) {
			deadline = r.deadline
		}
	}
	if len(batch) == 0 {
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	fail := func(err error) {
		for _, r := range batch {
			r.done <- err
		}
	}
	if err := s.storage.Lock(ctx, lockName); err != nil {
		fail(unavailable("taking the storage lock: %v", err))
		return
	}
	defer func() {
		// after the answers; bounded, as a silent storage would hold the
		// loop forever (the lock's lease, or its staleness, frees it)
		ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
		defer cancel()
		if err := s.storage.Unlock(ctx, lockName); err != nil {
			s.logger.Error("releasing the storage lock", zap.Error(err))
		}
	}()
	changed, err := s.catchUp(ctx)
	if err != nil {
		fail(unavailable("reading the state: %v", err))
		return
	}
	e := &entry{Seq: s.seq + 1, Puts: make(map[string]json.RawMessage)}
	errs := make([]error, len(batch))
	now := time.Now().UTC()
	// what the keys held before this batch, to undo it in memory if it
	// cannot be stored
	undo := make(map[string]json.RawMessage)
	var undos []func()
	s.mu.Lock()
	for i, r := range batch {
		t := &txn{st: s.st, now: now, changed: changed}
		err := runChange(r.fn, t)
		if err == nil {
			err = t.applyAll()
		}
		if err != nil {
			t.undo(s.logger) // a refused change leaves nothing behind
			errs[i] = err
			continue
		}
		for k, old := range t.prior {
			if _, ok := undo[k]; !ok {
				undo[k] = old
			}
		}
		undos = append(undos, t.undos...)
		for _, k := range t.dels {
			delete(e.Puts, k)
			e.Dels = append(e.Dels, k)
		}
		for k, v := range t.puts {
			e.Puts[k] = v
		}
	}
	s.mu.Unlock()
	if len(e.Puts) > 0 || len(e.Dels) > 0 {
		if err := s.write(ctx, e); err != nil {
			s.logger.Error("storing an IP state change; undoing it", zap.Error(err))
			for i := range errs {
				if errs[i] == nil {
					errs[i] = unavailable("storing the change: %v", err)
				}
			}
			s.mu.Lock()
			for k, old := range undo {
				if err := s.st.apply(k, old, changed); err != nil {
					s.logger.Error("undoing an unstored change", zap.String("key", k), zap.Error(err))
				}
			}
			for i := len(undos) - 1; i >= 0; i-- {
				undos[i]()
			}
			s.mu.Unlock()
		} else {
			s.seq = e.Seq
		}
	}
	// in effect before it is acknowledged: a 2xx means routing uses it
	s.notify(changed)
	for i, r := range batch {
		r.done <- errs[i]
	}
	if s.seq-s.snapSeq >= compactEvery {
		// after the answers, on a deadline of its own: the snapshot may be
		// large
		ctx, cancel := context.WithTimeout(context.Background(), defaultTimeout)
		defer cancel()
		if err := s.compact(ctx); err != nil {
			s.logger.Error("compacting the IP state", zap.Error(err))
		}
	}
}

// runChange runs fn, turning a panic into an error so that one bad
// change fails alone.
func runChange(fn func(*txn) error, t *txn) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("change panicked: %v", r)
		}
	}()
	return fn(t)
}

func (s *store) notifyAll() {
	if f := s.onChange.Load(); f != nil {
		(*f)(nil)
	}
}

func (s *store) write(ctx context.Context, e *entry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return s.storage.Store(ctx, logKey(e.Seq), b)
}

// catchUp applies what other edges stored since this one last looked:
// a newer snapshot if there is one, then every log entry after the last
// one applied. It returns the apps that changed.
func (s *store) catchUp(ctx context.Context) (map[string]bool, error) {
	changed := make(map[string]bool)
	info, err := s.storage.Stat(ctx, snapshotKey)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	case !info.Modified.Equal(s.snapMod):
		snap, err := s.loadSnapshot(ctx)
		if err != nil {
			return nil, err
		}
		s.snapMod = info.Modified
		if snap.Seq > s.seq {
			st := newState()
			for k, v := range snap.Records {
				if err := st.apply(k, v, changed); err != nil {
					return nil, err
				}
			}
			s.mu.Lock()
			s.st = st
			s.mu.Unlock()
			s.seq, s.snapSeq = snap.Seq, snap.Seq
			s.notifyAll()
		}
	}
	for {
		b, err := s.storage.Load(ctx, logKey(s.seq+1))
		if errors.Is(err, fs.ErrNotExist) {
			return changed, nil
		}
		if err != nil {
			return changed, err
		}
		var e entry
		if err := json.Unmarshal(b, &e); err != nil {
			return changed, fmt.Errorf("%s: %w", logKey(s.seq+1), err)
		}
		s.mu.Lock()
		for _, k := range e.Dels {
			err = errors.Join(err, s.st.apply(k, nil, changed))
		}
		for k, v := range e.Puts {
			err = errors.Join(err, s.st.apply(k, v, changed))
		}
		s.mu.Unlock()
		if err != nil {
			return changed, fmt.Errorf("%s: %w", logKey(s.seq+1), err)
		}
		s.seq++
	}
}

func (s *store) loadSnapshot(ctx context.Context) (*snapshot, error) {
	b, err := s.storage.Load(ctx, snapshotKey)
	if err != nil {
		return nil, err
	}
	var snap snapshot
	if err := json.Unmarshal(b, &snap); err != nil {
		return nil, fmt.Errorf("%s: %w", snapshotKey, err)
	}
	return &snap, nil
}

// compact writes the state as a snapshot and deletes the log entries
// more than one interval older than it. The caller holds the lock.
func (s *store) compact(ctx context.Context) error {
	s.mu.RLock()
	snap := snapshot{Seq: s.seq, Records: maps.Clone(s.st.records)}
	s.mu.RUnlock()
	b, err := json.Marshal(snap)
	if err != nil {
		return err
	}
	if err := s.storage.Store(ctx, snapshotKey, b); err != nil {
		return err
	}
	s.snapSeq = snap.Seq
	if info, err := s.storage.Stat(ctx, snapshotKey); err == nil {
		s.snapMod = info.Modified
	}
	keys, err := s.storage.List(ctx, logPrefix, false)
	if err != nil {
		return err
	}
	for _, k := range keys {
		n, err := strconv.ParseUint(path.Base(k), 10, 64)
		if err != nil || n+compactEvery > snap.Seq {
			continue
		}
		if err := s.storage.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}
