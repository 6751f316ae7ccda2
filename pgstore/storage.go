// Package pgstore is `caddy.storage.postgres`: Caddy's storage (a
// certmagic.Storage) in a PostgreSQL table, so that several edges on
// several hosts share their certificates, locks and flyedge state
// through a real database instead of a shared folder.
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
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
		return &db{pool: pool, table: s.Table, logger: s.logger, timeout: cfg.ConnConfig.ConnectTimeout}, nil
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

// Interface guards
var (
	_ caddy.Provisioner      = (*Storage)(nil)
	_ caddy.CleanerUpper     = (*Storage)(nil)
	_ caddy.StorageConverter = (*Storage)(nil)
	_ caddyfile.Unmarshaler  = (*Storage)(nil)
	_ certmagic.Storage      = (*store)(nil)
	_ certmagic.TryLocker    = (*store)(nil)
)
