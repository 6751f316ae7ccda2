#!/usr/bin/env bash
# What each proxied request costs the proxy in allocations, bytes allocated
# and CPU time: plain Caddy (the shared harness's Caddyfile: reverse_proxy
# with header_up lines) against the flyedge chain (bench/http.Caddyfile),
# one build of this repo's Caddy for both, in alternating runs.
#
# Allocations per request are counted by the Go runtime (expvar memstats on
# the admin endpoint, read before and after each wrk run), so they repeat
# from run to run on a host whose speed does not; read them beside the
# requests/s and CPU figures of bench/http.sh.
#
# Usage: bench/allocs.sh                       (5 runs of 8 s per proxy and test)
#        REPS=1 DURATION=3 bench/allocs.sh     (smoke)
# A third row, "caddy-fly", is plain Caddy sending the whole set of headers
# the flyedge chain sends (X-Forwarded-Ssl, X-Forwarded-Port and Fly-Request-Id
# to the app, Fly-Request-Id to the client, as header_up/header_down lines with
# placeholders for values: {http.request.scheme}, {http.request.local.port},
# {http.request.uuid}):
# what Fly's header set costs Caddy itself, apart from the flyedge modules.
#
# Knobs: REPS [5] DURATION [8] CONNS [64] TESTS ["h1 tls"] NAMES ["caddy caddy-fly flyedge"]
#        PIN [1]: the proxy on CPU 1 with GOMAXPROCS=1, wrk and the backend on CPU 0
#        HEADERS: extra request headers, "Name: value" lines, sent by wrk (say, a
#        browser's), so that the incoming header set is not wrk's bare one
# Ports: plain Caddy 8093/8453, flyedge 8094/8454, caddy-fly 8095/8455,
# admin 2991/2992/2993, backend 9011
# (the harness's ports plus 10, so it runs beside the demo and bench/http.sh's ports).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
HARNESS=${HARNESS:-"$REPO/../shared/bench/http"}
REPS=${REPS:-5} DURATION=${DURATION:-8} CONNS=${CONNS:-64} TESTS=${TESTS:-"h1 tls"} PIN=${PIN:-1}
HEADERS=${HEADERS:-}
NAMES=${NAMES:-"caddy caddy-fly flyedge"}
for t in wrk curl python3 taskset; do
	command -v "$t" >/dev/null || { echo "bench/allocs.sh: $t is missing" >&2; exit 2; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/flyedge-allocs.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
# the three configs on ports of their own (the harness's plus 10), admin on (for memstats)
prepare_three bench/allocs.sh "$TMP" 10

LOAD=() PROXY=()
if [[ $PIN == 1 ]]; then LOAD=(taskset -c 0) PROXY=(env GOMAXPROCS=1 taskset -c 1); fi
"${LOAD[@]}" "$TMP/backend" -addr 127.0.0.1:9011 >"$TMP/backend.log" 2>&1 & pids+=($!)

declare -A ADMIN=([caddy]=127.0.0.1:2991 [flyedge]=127.0.0.1:2992 [caddy-fly]=127.0.0.1:2993)

memstats() { # Mallocs TotalAlloc of the process behind admin $1
	curl -fsS -m 5 "http://$1/debug/vars" | python3 -c 'import json,sys; m=json.load(sys.stdin)["memstats"]; print(m["Mallocs"], m["TotalAlloc"])'
}
cputicks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "# $(date -u +%F) REPS=$REPS DURATION=$DURATION CONNS=$CONNS PIN=$PIN HEADERS=$(grep -c . <<<"$HEADERS" || true) lines; host: $(nproc) cpus"
printf '%-9s %-4s %-4s %9s %10s %12s %10s\n' name test rep rps allocs/r bytes/r cpu_us/r
declare -A A B C R
for test in $TESTS; do
	for rep in $(seq "$REPS"); do
		for name in $NAMES; do
			HOME=$TMP XDG_DATA_HOME=$TMP/data XDG_CONFIG_HOME=$TMP/config \
				"${PROXY[@]}" "$TMP/caddy" run --config "$TMP/$name.Caddyfile" --adapter caddyfile >"$TMP/$name.log" 2>&1 &
			pid=$!
			pids+=("$pid")
			url=${URL[$name:$test]}
			for _ in $(seq 100); do curl -ksf -m 2 -o /dev/null "$url" && break; sleep 0.1; done
			served_by bench/allocs.sh "$url" "$pid" "$TMP/$name.log"
			"${LOAD[@]}" wrk -t1 -c"$CONNS" -d2s "${hdrs[@]}" "$url" >/dev/null # warm up
			read -r m0 b0 <<<"$(memstats "${ADMIN[$name]}")"
			t0=$(cputicks "$pid")
			out=$("${LOAD[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" "${hdrs[@]}" "$url")
			t1=$(cputicks "$pid")
			read -r m1 b1 <<<"$(memstats "${ADMIN[$name]}")"
			kill "$pid"
			wait "$pid" 2>/dev/null || true
			n=$(awk '/requests in/ {print $1}' <<<"$out")
			errs=$(awk '/Non-2xx|Socket errors/' <<<"$out")
			[[ -z $errs ]] || echo "# $name $test rep $rep: $errs"
			read -r rps a b c < <(awk -v n="$n" -v d="$DURATION" -v m="$((m1 - m0))" -v by="$((b1 - b0))" -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" \
				'BEGIN {printf "%.0f %.1f %.0f %.1f\n", n / d, m / n, by / n, t / hz * 1e6 / n}')
			printf '%-9s %-4s %-4s %9s %10s %12s %10s\n' "$name" "$test" "$rep" "$rps" "$a" "$b" "$c"
			R[$name:$test]+="$rps " A[$name:$test]+="$a " B[$name:$test]+="$b " C[$name:$test]+="$c "
		done
	done
done
echo "# medians"
printf '%-9s %-4s %9s %10s %12s %10s\n' name test rps allocs/r bytes/r cpu_us/r
for test in $TESTS; do
	for name in $NAMES; do
		k=$name:$test
		printf '%-9s %-4s %9s %10s %12s %10s\n' "$name" "$test" "$(median "${R[$k]}")" "$(median "${A[$k]}")" "$(median "${B[$k]}")" "$(median "${C[$k]}")"
	done
done
