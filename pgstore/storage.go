// Package pgstore is `caddy.storage.postgres`: Caddy's storage (a
// certmagic.Storage) in a PostgreSQL table, so that several edges on
// several hosts share their certificates, locks and flyedge state
// through a real database instead of a shared folder.
package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(new(Storage))
}

// Storage (`caddy.storage.postgres`) keeps everything Caddy stores
// (certificates, ACME accounts, locks, the flyedge state) in one
// PostgreSQL table, created if missing:
//
//	CREATE TABLE IF NOT EXISTS flyedge_storage (
//		kind     text        NOT NULL,   -- 'k': a key and its value; 'l': a lock
//		key      text        NOT NULL,   -- the key, or the lock's name
//		value    bytea,                  -- a key's value
//		modified timestamptz NOT NULL DEFAULT now(),
//		owner    text,                   -- a lock's holder (a random token)
//		expires  timestamptz,            -- a lock's lease end
//		PRIMARY KEY (kind, key)
//	)
//
// Locks are leases: the holder renews its lease every third of
// lock_lease while it holds the lock, and a lock whose lease has run
// out (its holder crashed or lost the database) is taken by the next
// edge that asks. So a lock outlives neither its holder nor a pooled
// connection, unlike a session advisory lock.
//
//	storage postgres {
//		dsn {env.FLYEDGE_STORAGE_DSN}
//	}
type Storage struct {
	// The PostgreSQL connection string (a URL or key=value pairs, as
	// libpq takes them); placeholders such as {env.FLYEDGE_STORAGE_DSN}
	// are replaced, so the password need not be in the config.
	// Required.
	DSN string `json:"dsn,omitempty"`

	// The table's name: letters, digits and underscores.
	// Default: flyedge_storage
	Table string `json:"table,omitempty"`

	// How long a lock holds without renewal: another edge takes the lock
	// of a holder that crashed after at most this long.
	// Default: 10s
	LockLease caddy.Duration `json:"lock_lease,omitempty"`

	// How often a waiting Lock tries again.
	// Default: 250ms
	LockPoll caddy.Duration `json:"lock_poll,omitempty"`

	db     *db
	key    string // names the database and table, without the password
	dsnKey string // the pool's key
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Storage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.postgres",
		New: func() caddy.Module { return new(Storage) },
	}
}

// tableRE leaves room for the "_l" of the locks' notification channel
// in PostgreSQL's 63-byte identifiers.
var tableRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,60}$`)

// pools shares one connection pool per DSN and table across config loads.
var pools = caddy.NewUsagePool()

// Provision parses the DSN and sets up the connection pool; it does not
// connect (pgx connects on first use).
func (s *Storage) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	if s.Table == "" {
		s.Table = "flyedge_storage"
	}
	if s.LockLease == 0 {
		s.LockLease = caddy.Duration(10 * time.Second)
	}
	if s.LockPoll == 0 {
		s.LockPoll = caddy.Duration(250 * time.Millisecond)
	}
	if !tableRE.MatchString(s.Table) {
		return fmt.Errorf("table: %q is not a table name (letters, digits and _)", s.Table)
	}
	if s.LockLease < caddy.Duration(time.Second) || s.LockPoll <= 0 {
		return errors.New("lock_lease must be at least 1s and lock_poll positive")
	}
	dsn := caddy.NewReplacer().ReplaceAll(s.DSN, "")
	if dsn == "" {
		return errors.New("dsn: the PostgreSQL connection string is required")
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return fmt.Errorf("dsn: %v", redact(err, dsn))
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		// an unreachable database fails a change in seconds, not minutes
		cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	}
	s.key = fmt.Sprintf("%s@%s:%d/%s/%s", cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, s.Table)
	v, _, err := pools.LoadOrNew(s.key+"|"+dsn, func() (caddy.Destructor, error) {
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			return nil, err
		}
		return &db{pool: pool, table: s.Table, logger: s.logger}, nil
	})
	if err != nil {
		return fmt.Errorf("dsn: %v", redact(err, dsn))
	}
	s.db = v.(*db)
	s.dsnKey = s.key + "|" + dsn
	return nil
}

// Cleanup releases the pool.
func (s *Storage) Cleanup() error {
	if s.db != nil {
		_, err := pools.Delete(s.dsnKey)
		return err
	}
	return nil
}

// CertMagicStorage implements caddy.StorageConverter.
func (s *Storage) CertMagicStorage() (certmagic.Storage, error) {
	return &store{db: s.db, key: s.key, lease: time.Duration(s.LockLease), poll: time.Duration(s.LockPoll), logger: s.logger}, nil
}

// UnmarshalCaddyfile sets up the storage from Caddyfile tokens. Syntax:
//
//	storage postgres [<dsn>] {
//		dsn <dsn>
//		table <name>
//		lock_lease <duration>
//		lock_poll <duration>
//	}
func (s *Storage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // module name
	if d.NextArg() {
		s.DSN = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		var v string
		if !d.AllArgs(&v) {
			return d.ArgErr()
		}
		switch opt {
		case "dsn":
			if s.DSN != "" {
				return d.Err("dsn already specified")
			}
			s.DSN = v
		case "table":
			if s.Table != "" {
				return d.Err("table already specified")
			}
			s.Table = v
		case "lock_lease", "lock_poll":
			dst := &s.LockLease
			if opt == "lock_poll" {
				dst = &s.LockPoll
			}
			if *dst != 0 {
				return d.Errf("%s already specified", opt)
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("%s %q: %v", opt, v, err)
			}
			*dst = caddy.Duration(dur)
		default:
			return d.Errf("unrecognized postgres storage option '%s'", opt)
		}
	}
	return nil
}

// redact removes the DSN (and so its password) from an error message.
func redact(err error, dsn string) string {
	return strings.ReplaceAll(err.Error(), dsn, "<dsn>")
}

// db is a connection pool and its table, shared by the configs that use
// them.
type db struct {
	pool   *pgxpool.Pool
	table  string
	logger *zap.Logger

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
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			conn.Conn().Close(context.Background()) // do not return a listening connection to the pool
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

// ready creates the table if need be (once it worked).
func (d *db) ready(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.created {
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
	d.created = true
	return nil
}

// store is the certmagic.Storage of a Storage.
type store struct {
	db     *db
	key    string
	lease  time.Duration
	poll   time.Duration
	logger *zap.Logger

	mu   sync.Mutex
	held map[string]*lease // locks this storage holds, by name
}

type lease struct {
	owner string
	stop  context.CancelFunc
	done  chan struct{}
}

// String names the database and table (never the password): Caddy and
// flyedge key shared state by it.
func (s *store) String() string { return "postgres:" + s.key }

func (s *store) exec(ctx context.Context, sql string, args ...any) error {
	if err := s.db.ready(ctx); err != nil {
		return err
	}
	_, err := s.db.pool.Exec(ctx, strings.ReplaceAll(sql, "$table", s.db.table), args...)
	return err
}

func (s *store) query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := s.db.ready(ctx); err != nil {
		return nil, err
	}
	return s.db.pool.Query(ctx, strings.ReplaceAll(sql, "$table", s.db.table), args...)
}

// Store implements certmagic.Storage.
func (s *store) Store(ctx context.Context, key string, value []byte) error {
	if value == nil {
		value = []byte{}
	}
	return s.exec(ctx, `WITH stored AS (INSERT INTO $table (kind, key, value, modified) VALUES ('k', $1, $2, now())
		ON CONFLICT (kind, key) DO UPDATE SET value = excluded.value, modified = now() RETURNING key)
		SELECT pg_notify('$table', key) FROM stored`, key, value)
}

// SubscribeChanges returns a channel that receives the keys any edge
// stores in this table, as PostgreSQL notifies them ("" when the
// listener reconnected and changes may have been missed), and a function
// that ends the subscription. Keys may be dropped when the subscriber
// falls behind: a key means "something changed".
func (s *store) SubscribeChanges() (<-chan string, func()) { return s.db.subscribe() }

// Load implements certmagic.Storage.
func (s *store) Load(ctx context.Context, key string) ([]byte, error) {
	rows, err := s.query(ctx, `SELECT value FROM $table WHERE kind = 'k' AND key = $1`, key)
	if err != nil {
		return nil, err
	}
	value, err := pgx.CollectOneRow(rows, pgx.RowTo[[]byte])
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fs.ErrNotExist
	}
	return value, err
}

// Delete implements certmagic.Storage: the key, and every key under it.
func (s *store) Delete(ctx context.Context, key string) error {
	return s.exec(ctx, `DELETE FROM $table WHERE kind = 'k' AND (key = $1 OR starts_with(key, $2))`, key, dirPrefix(key))
}

// Exists implements certmagic.Storage.
func (s *store) Exists(ctx context.Context, key string) bool {
	rows, err := s.query(ctx, `SELECT EXISTS (SELECT 1 FROM $table WHERE kind = 'k' AND (key = $1 OR starts_with(key, $2)))`, key, dirPrefix(key))
	if err != nil {
		return false
	}
	ok, err := pgx.CollectOneRow(rows, pgx.RowTo[bool])
	return err == nil && ok
}

// List implements certmagic.Storage: the keys and directories under
// path; with recursive, at every depth, else its direct children only.
func (s *store) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	prefix := dirPrefix(path)
	rows, err := s.query(ctx, `SELECT key FROM $table WHERE kind = 'k' AND starts_with(key, $1) ORDER BY key`, prefix)
	if err != nil {
		return nil, err
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, fs.ErrNotExist
	}
	seen := make(map[string]bool)
	var out []string
	add := func(k string) {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	for _, k := range keys {
		rest := strings.TrimPrefix(k, prefix)
		if !recursive {
			first, _, _ := strings.Cut(rest, "/")
			add(prefix + first)
			continue
		}
		for i := strings.IndexByte(rest, '/'); i >= 0; {
			add(prefix + rest[:i])
			j := strings.IndexByte(rest[i+1:], '/')
			if j < 0 {
				break
			}
			i += 1 + j
		}
		add(k)
	}
	slices.Sort(out)
	return out, nil
}

// Stat implements certmagic.Storage.
func (s *store) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	rows, err := s.query(ctx, `SELECT modified, length(value) FROM $table WHERE kind = 'k' AND key = $1`, key)
	if err != nil {
		return certmagic.KeyInfo{}, err
	}
	type info struct {
		Modified time.Time
		Length   int64
	}
	in, err := pgx.CollectOneRow(rows, pgx.RowToStructByPos[info])
	switch {
	case err == nil:
		return certmagic.KeyInfo{Key: key, Modified: in.Modified, Size: in.Length, IsTerminal: true}, nil
	case !errors.Is(err, pgx.ErrNoRows):
		return certmagic.KeyInfo{}, err
	}
	if s.Exists(ctx, key) {
		return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
	}
	return certmagic.KeyInfo{}, fs.ErrNotExist
}

// dirPrefix is key as a directory: "a/b" → "a/b/", "" → "".
func dirPrefix(key string) string {
	key = strings.Trim(key, "/")
	if key == "" {
		return ""
	}
	return key + "/"
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

// Interface guards
var (
	_ caddy.Provisioner      = (*Storage)(nil)
	_ caddy.CleanerUpper     = (*Storage)(nil)
	_ caddy.StorageConverter = (*Storage)(nil)
	_ caddyfile.Unmarshaler  = (*Storage)(nil)
	_ certmagic.Storage      = (*store)(nil)
	_ certmagic.TryLocker    = (*store)(nil)
)
