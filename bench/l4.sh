#!/usr/bin/env bash
# TCP pass-through benchmark of flyedge's layer4 handler `fly_proxy` beside the
# peers of the shared L4 harness (direct, caddy-l4's plain `proxy`, HAProxy
# `mode tcp`, nginx `stream`, socat), in one run, on loopback: bulk throughput
# (iperf3, 1 and 4 streams), new connections per second (conncount) and the
# proxy's CPU per GB / per connection.
#
# It builds this repo's Caddy (which includes caddy-l4) and runs bench/l4/run.sh,
# a copy of ../shared/bench/l4/run.sh with the extra path `flyedge` (edge ports
# 15206 bulk / 15216 conn, config bench/l4/flyedge.Caddyfile). The same binary
# serves the caddy_l4 row, so both Caddy rows share one Caddy and Go version and
# differ only in the handler (caddy-l4 `proxy` vs. flyedge `fly_proxy`).
#
# Usage: bench/l4.sh                                                    (full run, ~9 min)
#        TARGETS="direct caddy_l4 flyedge" REPS=1 DURATION=4 bench/l4.sh  (smoke, ~1 min)
# Knobs (environment, passed through to run.sh; see bench/README.md):
#   TARGETS ["direct caddy_l4 flyedge haproxy nginx socat"]  TESTS ["bulk1 bulk4 conn"]
#     (through TLS: TESTS="tlsbulk1 tlsbulk4 tlsconn", configs in bench/l4/tls/)
#   REPS [3]  DURATION [8]  WORKERS [32]  WARMUP [2]  PAUSE [1]
#   OUTDIR [/tmp/l4bench/<time>]  GO [go on PATH]
#   SHARED [<repo>/../shared/bench/l4]  the shared harness (configs, conncount/)
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
RUNSH=$BENCH/l4/run.sh
CADDYFILE=$BENCH/l4/flyedge.Caddyfile
SHARED=${SHARED:-"$BENCH/../../shared/bench/l4"}   # i.e. "$(dirname "$0")/../../shared/bench/l4"
TARGETS=${TARGETS:-"direct caddy_l4 flyedge haproxy nginx socat"}
export SHARED TARGETS

# ---------- prerequisites ----------
# Required: iperf3 jq ss go. Optional (a missing one is skipped by run.sh):
# haproxy, nginx + its stream module, socat; they are only asked for when in TARGETS.
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
export GO   # run.sh builds conncount with $GO
missing=() pkgs=() optional=()
for t in iperf3 jq ss; do
  command -v "$t" >/dev/null || { missing+=("$t"); pkgs+=("$([[ $t == ss ]] && echo iproute2 || echo "$t")"); }
done
[[ -x "$GO" ]] || missing+=("go (set GO=/path/to/go; https://go.dev/dl/)")
for t in $TARGETS; do
  case $t in
    haproxy) command -v haproxy >/dev/null || optional+=(haproxy) ;;
    nginx)   command -v nginx >/dev/null || optional+=(nginx)
             [[ -f /usr/lib/nginx/modules/ngx_stream_module.so ]] || optional+=(libnginx-mod-stream) ;;
    socat)   command -v socat >/dev/null || optional+=(socat) ;;
  esac
done
if ((${#missing[@]})); then
  echo "bench/l4.sh: missing tools: ${missing[*]}" >&2
  ((${#pkgs[@]} + ${#optional[@]})) && echo "install them with:  apt-get install -y ${pkgs[*]} ${optional[*]}" >&2
  exit 2
fi
if ((${#optional[@]})); then
  echo "bench/l4.sh: missing ${optional[*]}: those paths will be skipped" >&2
  echo "install with:  apt-get install -y ${optional[*]}" >&2
fi
[[ -x "$RUNSH" && -f "$CADDYFILE" ]] || { echo "bench/l4.sh: missing $RUNSH or $CADDYFILE" >&2; exit 2; }
[[ -f "$SHARED/caddy-l4.json" && -d "$SHARED/conncount" ]] ||
  { echo "bench/l4.sh: shared harness not found at $SHARED (set SHARED=<dir>)" >&2; exit 2; }

# The harness's fixed ports: say who holds one before run.sh refuses to start.
declare -A PORTS=([direct]="15201 15211" [caddy_l4]="15202 15212" [haproxy]="15203 15213"
                  [nginx]="15204 15214" [socat]="15205 15215" [flyedge]="15206 15216")
busy=()
for p in 15201 15211 $(for t in $TARGETS; do echo "${PORTS[$t]:-}"; done); do
  ss -Hltn "sport = :$p" | grep -q . && busy+=("$p")
done
if ((${#busy[@]})); then
  echo "bench/l4.sh: port(s) ${busy[*]} already in use:" >&2
  for p in "${busy[@]}"; do ss -Hltnp "sport = :$p" >&2; done
  exit 2
fi

# ---------- build our Caddy ----------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/flyedge-l4bench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
echo "bench/l4.sh: building $REPO/cmd/caddy" >&2
(cd "$REPO" && "$GO" build -o "$TMP/caddy" ./cmd/caddy)
# Fail early, with Caddy's own message, if the config does not adapt.
sed "s#__RUN__#$TMP/adapt#g" "$CADDYFILE" > "$TMP/flyedge.Caddyfile"
"$TMP/caddy" adapt --config "$TMP/flyedge.Caddyfile" --adapter caddyfile >/dev/null

# ---------- run the harness ----------
# Not exec'd, so the trap removes the binary afterwards; run.sh stops its own
# processes (by PID) on exit and on Ctrl-C.
set +e
CADDY="$TMP/caddy" FLYEDGE_CADDY="$TMP/caddy" FLYEDGE_CADDYFILE="$CADDYFILE" "$RUNSH"
rc=$?
exit $rc
