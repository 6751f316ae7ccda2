#!/usr/bin/env bash
# pgbench benchmark of flyedge's PostgreSQL TLS edge (layer4 `pg_tls` + `fly_proxy`)
# beside the peers of the shared harness ../shared/bench/pg/run.sh, in one run, on
# loopback: PostgreSQL direct (no TLS), PostgreSQL's own SSL, caddy-l4's
# `postgres` matcher + `postgres_tls` + `tls` + `proxy` chain, and pgbouncer with
# client TLS (transaction pooling). pgbench select-only (-S), scale 10, 16 clients,
# with persistent connections and with -C (a new connection, hence a new TLS
# handshake and a new backend, per transaction).
#
# It builds this repo's Caddy (which includes caddy-l4, so the same binary serves
# the caddy_l4 row: both Caddy rows share one Caddy and Go version) and runs the
# shared run.sh unchanged, joining it as its "extra" path:
#   EXTRA_CADDY=<our caddy> EXTRA_CONFIG=bench/pg/flyedge.json EXTRA_NAME=flyedge
# flyedge listens on 127.0.0.1:$EXTRA_PORT [15435]; its app `pg` has one machine,
# the harness's PostgreSQL (127.0.0.1:$PG_PORT [15432]). Its certificate comes from
# Caddy's tls app (internal CA, stored under the harness's run dir).
#
# Usage (as root: the harness runs PostgreSQL and pgbouncer as user postgres):
#   bench/pg.sh                                                  (full run, ~10 min)
#   REPS=1 DURATION=3 WARMUP=1 PAUSE=1 bench/pg.sh               (smoke, ~1 min)
#   PATHS="direct_ssl caddy_l4 flyedge" MODES=connect bench/pg.sh
# Knobs (environment, passed through to run.sh; defaults in brackets, see bench/README.md):
#   SCALE [10] CLIENTS [16] THREADS [2] DURATION [15] REPS [3] WARMUP [5] PAUSE [2]
#   PATHS ["direct direct_ssl caddy_l4 pgbouncer flyedge"] (flyedge = the harness's "extra")
#   MODES ["persistent connect"]  CHECKS [1]  CHECK_TIMEOUT [15]
#   BASE [/tmp/pgbench] (cluster, certs, run dir)  PGBIN [/usr/lib/postgresql/15/bin]
#   PG_PORT [15432] L4_PORT [15433] BOUNCER_PORT [15434] EXTRA_PORT [15435]
#   GO [go on PATH]  HARNESS [<repo>/../shared/bench/pg]
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
CONFIG=$BENCH/pg/flyedge.json
HARNESS=${HARNESS:-"$BENCH/../../shared/bench/pg"}
BASE=${BASE:-/tmp/pgbench}
PG_PORT=${PG_PORT:-15432} L4_PORT=${L4_PORT:-15433} BOUNCER_PORT=${BOUNCER_PORT:-15434} EXTRA_PORT=${EXTRA_PORT:-15435}
PATHS=${PATHS:-"direct direct_ssl caddy_l4 pgbouncer flyedge"}
PATHS=$(echo " $PATHS " | sed 's/ flyedge / extra /g; s/^ *//; s/ *$//')   # the harness calls it "extra"
if [[ -z ${PGBIN:-} ]]; then   # the harness's default, else the newest installed PostgreSQL
  PGBIN=/usr/lib/postgresql/15/bin
  [[ -x $PGBIN/pgbench ]] || PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
fi
export BASE PGBIN PG_PORT L4_PORT BOUNCER_PORT EXTRA_PORT PATHS

# ---------- prerequisites ----------
# The harness would apt-get install postgresql + pgbouncer itself when pgbench or
# pgbouncer is missing; this script says what is missing instead.
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
missing=() pkgs=()
need() { missing+=("$1"); [[ " ${pkgs[*]} " == *" $2 "* ]] || pkgs+=("$2"); }
pgv=$(basename "$(dirname "$PGBIN")"); [[ $pgv =~ ^[0-9]+$ ]] || pgv=15
for t in postgres initdb pg_ctl pgbench; do [[ -x $PGBIN/$t ]] || need "$PGBIN/$t" "postgresql-$pgv"; done
for t in psql createdb; do [[ -x $PGBIN/$t ]] || need "$PGBIN/$t" "postgresql-client-$pgv"; done
command -v pgbouncer >/dev/null || need pgbouncer pgbouncer   # always: run.sh installs it otherwise
command -v openssl >/dev/null   || need openssl openssl
command -v ss >/dev/null        || need ss iproute2
command -v setpriv >/dev/null   || need setpriv util-linux
command -v timeout >/dev/null   || need timeout coreutils
if ((${#missing[@]})); then
  echo "bench/pg.sh: missing tools: ${missing[*]}" >&2
  echo "install them with:  apt-get install -y ${pkgs[*]}" >&2
  exit 2
fi
[[ -x $GO ]] || { echo "bench/pg.sh: no Go toolchain (set GO=/path/to/go; https://go.dev/dl/)" >&2; exit 2; }
((EUID == 0)) || { echo "bench/pg.sh: run as root (the harness starts PostgreSQL and pgbouncer as user postgres via setpriv)" >&2; exit 2; }
id postgres >/dev/null 2>&1 || { echo "bench/pg.sh: no user postgres (it comes with the postgresql-common package)" >&2; exit 2; }
[[ -f $HARNESS/run.sh && -f $HARNESS/caddy-l4.json ]] ||
  { echo "bench/pg.sh: shared harness not found at $HARNESS (set HARNESS=<dir>)" >&2; exit 2; }
[[ -f $CONFIG ]] || { echo "bench/pg.sh: missing $CONFIG" >&2; exit 2; }

# The harness's ports: say who holds one before run.sh refuses to start. PG_PORT may be
# held by the harness's own PostgreSQL from an earlier, interrupted run: run.sh reuses it.
declare -A PORT=([caddy_l4]=$L4_PORT [pgbouncer]=$BOUNCER_PORT [extra]=$EXTRA_PORT)
busy=()
for p in $PG_PORT $(for t in $PATHS; do echo "${PORT[$t]:-}"; done); do
  ss -Hltn "sport = :$p" | grep -q . || continue
  if [[ $p == "$PG_PORT" ]] && pgrep -u postgres -f -- "-D $BASE/data" >/dev/null; then
    echo "bench/pg.sh: the harness's PostgreSQL ($BASE/data) is already running on $p; run.sh will use it and leave it running" >&2
    continue
  fi
  busy+=("$p")
done
if ((${#busy[@]})); then
  echo "bench/pg.sh: port(s) ${busy[*]} already in use (set PG_PORT/L4_PORT/BOUNCER_PORT/EXTRA_PORT):" >&2
  for p in "${busy[@]}"; do ss -Hltnp "sport = :$p" >&2; done
  exit 2
fi

# ---------- build our Caddy ----------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/flyedge-pgbench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
echo "bench/pg.sh: building $REPO/cmd/caddy" >&2
(cd "$REPO" && "$GO" build -o "$TMP/caddy" ./cmd/caddy)
# Fail early, with Caddy's own message, if the config does not load (rendered as run.sh does,
# with a throwaway storage dir).
sed -e "s#__RUN__#$TMP/validate#g" -e "s#__PORT__#$EXTRA_PORT#g" -e "s#__PGPORT__#$PG_PORT#g" \
  "$CONFIG" > "$TMP/flyedge.json"
XDG_CONFIG_HOME=$TMP/validate XDG_DATA_HOME=$TMP/validate \
  "$TMP/caddy" validate --config "$TMP/flyedge.json" >"$TMP/validate.log" 2>&1 ||
  { cat "$TMP/validate.log" >&2; echo "bench/pg.sh: $CONFIG does not load" >&2; exit 2; }

# ---------- run the harness ----------
# Not exec'd, so the trap removes the binary afterwards; run.sh stops what it started
# (by PID; its PostgreSQL with pg_ctl) on exit and on Ctrl-C.
# CADDY_SRC too: run.sh's default for it, $(command -v caddy), ends it under set -e when
# no caddy is on PATH, even with CADDY set.
set +e
CADDY="$TMP/caddy" CADDY_SRC="$TMP/caddy" EXTRA_CADDY="$TMP/caddy" EXTRA_CONFIG="$CONFIG" EXTRA_NAME=flyedge \
  EXTRA_SSLMODE=require bash "$HARNESS/run.sh"   # run.sh is read-only, not executable
rc=$?
exit $rc
