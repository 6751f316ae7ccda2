#!/usr/bin/env bash
# What a fly-replay costs: POSTs of 1 KiB through the flyedge HTTP chain,
# answered by the nearest machine (/plain), against the same POSTs that
# the nearest machine answers with `fly-replay: instance=<the other>`
# (/replay), so the edge sends each again with its body. wrk, interleaved
# runs; requests per second and p99 latency of each, and their ratio.
#
# Usage: bench/replay.sh                      (3 runs of 8 s each)
#        REPS=1 DURATION=3 bench/replay.sh    (smoke)
# Knobs: REPS DURATION THREADS CONNS
set -euo pipefail
. "$(dirname "$0")/lib.sh"
REPO=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-3} DURATION=${DURATION:-8} THREADS=${THREADS:-2} CONNS=${CONNS:-64}
command -v wrk >/dev/null || { echo "bench/replay.sh: wrk is missing (apt-get install -y wrk)" >&2; exit 2; }
for p in 8085 9101; do
	if ss -Hltn "sport = :$p" | grep -q .; then echo "bench/replay.sh: port $p is in use" >&2; exit 2; fi
done
TMP=$(mktemp -d "${TMPDIR:-/tmp}/flyedge-replay.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
(cd "$REPO" && go build -o "$TMP/caddy" ./cmd/caddy && go build -o "$TMP/backend" ./bench/replay/backend)
"$TMP/backend" -target 0000000000b002 & pids+=($!)
HOME=$TMP XDG_DATA_HOME=$TMP/data XDG_CONFIG_HOME=$TMP/config "$TMP/caddy" run --config "$REPO/bench/replay/Caddyfile" >"$TMP/caddy.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do curl -s -o /dev/null -H 'Host: bench.localhost' http://127.0.0.1:8085/plain && break; sleep 0.2; done
for path in plain replay; do # warm up, and check the answers
	out=$(curl -s -H 'Host: bench.localhost' --data-binary "$(head -c 1024 /dev/zero | tr '\0' x)" "http://127.0.0.1:8085/$path")
	[[ $out == "ok 1024" ]] || { echo "bench/replay.sh: /$path answered \"$out\"" >&2; exit 1; }
	wrk -t"$THREADS" -c"$CONNS" -d2s -s "$REPO/bench/replay/post.lua" "http://127.0.0.1:8085/$path" >/dev/null
done
echo "# $(date -u +%F) REPS=$REPS DURATION=$DURATION THREADS=$THREADS CONNS=$CONNS; host: $(nproc) cpus"
printf '%-8s %-4s %12s %10s %8s\n' path rep rps p99_ms errors
declare -A RPS P99
for rep in $(seq "$REPS"); do
	for path in plain replay; do
		res=$(wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$REPO/bench/replay/post.lua" "http://127.0.0.1:8085/$path")
		rps=$(awk '/Requests\/sec/ {print $2}' <<<"$res")
		p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$res")
		errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$res" | tr '\n' ' ')
		printf '%-8s %-4s %12s %10s %8s\n' "$path" "$rep" "$rps" "$p99" "${errs:-0}"
		RPS[$path]+="$rps " P99[$path]+="$p99 "
	done
done
rp=$(median "${RPS[plain]}") rr=$(median "${RPS[replay]}") pp=$(median "${P99[plain]}") pr=$(median "${P99[replay]}")
awk -v rp="$rp" -v rr="$rr" -v pp="$pp" -v pr="$pr" 'BEGIN {
	printf "medians: plain %.0f rps, p99 %.2f ms; replay %.0f rps, p99 %.2f ms\n", rp, pp, rr, pr
	printf "a replayed POST costs %.2f times a plain one (rps), p99 %.2f times (goal: under 2)\n", rp / rr, pr / pp }'
