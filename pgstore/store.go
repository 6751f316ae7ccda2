// The certmagic.Storage of a Storage (store): keys and their values in the
// table, read and written through the shared pool.

package pgstore

import (
	"context"
	"errors"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap"
)

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

// String names the database and table (never the password): Caddy and
// flyedge key shared state by it.
func (s *store) String() string { return "postgres:" + s.key }

// Timeout is how long an operation may wait for the database before it
// is taken as unreachable: the connection timeout (the DSN's
// connect_timeout, 5 s if it sets none). flyedge's state gives a change
// this long, from its request to its answer.
func (s *store) Timeout() time.Duration { return s.db.timeout }

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
