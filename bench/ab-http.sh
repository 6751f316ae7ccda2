#!/usr/bin/env bash
# A/B of the flyedge HTTP chain between two commits: builds cmd/caddy at
# each, serves bench/replay/Caddyfile (app "bench", machines played by
# bench/replay/backend) with the proxy pinned to CPU 0 and wrk on CPU 1,
# and runs GET /plain on each build in alternation.
#
# Usage: bench/ab-http.sh <rev-a> [<rev-b>, default the work tree]
# Knobs: REPS [5] DURATION [6] CONNS [64]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
A=${1:?usage: bench/ab-http.sh <rev-a> [<rev-b>]} B=${2:-}
REPS=${REPS:-5} DURATION=${DURATION:-6} CONNS=${CONNS:-64}
command -v wrk >/dev/null || { echo "bench/ab-http.sh: wrk is missing (apt-get install -y wrk)" >&2; exit 2; }
TMP=$(mktemp -d "${TMPDIR:-/tmp}/flyedge-ab.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
	git -C "$REPO" worktree remove --force "$TMP/a" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
git -C "$REPO" worktree add -q "$TMP/a" "$A"
(cd "$TMP/a" && go build -o "$TMP/caddy-a" ./cmd/caddy)
if [[ -n $B ]]; then
	git -C "$REPO" worktree add -q "$TMP/b" "$B"
	(cd "$TMP/b" && go build -o "$TMP/caddy-b" ./cmd/caddy)
else
	(cd "$REPO" && go build -o "$TMP/caddy-b" ./cmd/caddy)
fi
(cd "$REPO" && go build -o "$TMP/backend" ./bench/replay/backend)
sed 's/admin off/admin 127.0.0.1:2099/' "$REPO/bench/replay/Caddyfile" >"$TMP/Caddyfile"
"$TMP/backend" -target 0000000000b002 & pids+=($!)
run() {
	HOME=$TMP XDG_DATA_HOME=$TMP/d XDG_CONFIG_HOME=$TMP/c taskset -c 0 "$TMP/$1" run --config "$TMP/Caddyfile" >"$TMP/$1.log" 2>&1 &
	local cp=$!
	for _ in $(seq 50); do curl -s -o /dev/null -H 'Host: bench.localhost' http://127.0.0.1:8085/plain && break; sleep 0.2; done
	taskset -c 1 wrk -t2 -c"$CONNS" -d2s -H 'Host: bench.localhost' http://127.0.0.1:8085/plain >/dev/null
	echo "$1 $(taskset -c 1 wrk -t2 -c"$CONNS" -d"${DURATION}s" -H 'Host: bench.localhost' http://127.0.0.1:8085/plain | awk '/Requests\/sec/ {print $2}')"
	kill "$cp"; wait "$cp" 2>/dev/null || true
}
echo "# $(date -u +%F) a=$A b=${B:-work tree} REPS=$REPS DURATION=$DURATION CONNS=$CONNS"
for _ in $(seq "$REPS"); do run caddy-a; run caddy-b; done
