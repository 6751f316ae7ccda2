#!/usr/bin/env bash
# Instructions each proxied request costs the proxy, counted by valgrind's
# callgrind: plain Caddy (the shared harness's Caddyfile), plain Caddy
# sending Fly's header set (caddy-fly) and the flyedge chain
# (bench/http.Caddyfile), one build of this repo's Caddy for all three.
#
# Requests/s and CPU time move with whatever else the host runs; instruction
# counts do not: the same binary, config and requests give the same count
# within about 1% from run to run (on a host where one proxy's requests/s
# swings 50% inside one bench/http.sh run). The count includes the garbage
# collector's work, which grows with the bytes each request allocates.
# It is not time: a cache miss costs more than an add. Read it beside
# bench/http.sh's requests/s.
#
# Each proxy runs alone under callgrind (GOMAXPROCS=1) with counting off;
# h2load sends WARM requests, counting is switched on, h2load sends N
# requests over HTTP/1.1 on CONNS keep-alive connections, and the count is
# dumped. Printed per request: all instructions (Ir/req), those under
# zap.(*Logger).With (reverse_proxy encodes the request with every header
# for its "upstream roundtrip" debug log on every round trip, whatever the
# log level), and those in flyedge's own functions (their self cost: what
# they call, allocation and map writes included, is not in it).
#
# Usage: bench/instr.sh                  (N=20000, h1 and tls: ~12 min)
#        N=2000 TESTS=h1 bench/instr.sh  (smoke, ~2 min)
# Knobs: N [20000] WARM [1000] CONNS [16] TESTS ["h1 tls"] NAMES ["caddy caddy-fly flyedge"]
#        HEADERS: extra request headers, "Name: value" lines, sent by h2load
#        (say, bench/browser-headers.txt), so that the request is not h2load's bare one
# Ports: the harness's plus 20: caddy 8103/8463, flyedge 8104/8464,
# caddy-fly 8105/8465, admin 3001-3003, backend 9021.
# Needs valgrind and h2load (Debian: valgrind nghttp2-client).
#
# Go programs run under valgrind with GODEBUG=cpu.rdtscp=off (valgrind does
# not know RDTSCP, which the runtime's clock uses where the CPU has it) and
# asyncpreemptoff=1 (callgrind asserts on the preemption signal).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
HARNESS=${HARNESS:-"$REPO/../shared/bench/http"}
N=${N:-20000} WARM=${WARM:-1000} CONNS=${CONNS:-16} TESTS=${TESTS:-"h1 tls"}
NAMES=${NAMES:-"caddy caddy-fly flyedge"} HEADERS=${HEADERS:-}
for t in $TESTS; do
	[[ $t =~ ^(h1|tls)$ ]] || { echo "bench/instr.sh: TESTS: $t is neither h1 nor tls" >&2; exit 2; }
done
[[ $N =~ ^[0-9]+$ && $WARM =~ ^[0-9]+$ && $CONNS =~ ^[0-9]+$ && $CONNS -gt 0 ]] || { echo "bench/instr.sh: N, WARM and CONNS are counts" >&2; exit 2; }
# h2load refuses fewer requests than connections
[[ $N -ge $CONNS && ($WARM == 0 || $WARM -ge $CONNS) ]] || { echo "bench/instr.sh: N and WARM (unless 0) must be at least CONNS ($CONNS)" >&2; exit 2; }
for t in valgrind callgrind_control callgrind_annotate h2load curl ss; do
	command -v "$t" >/dev/null || { echo "bench/instr.sh: $t is missing (Debian: apt-get install valgrind nghttp2-client)" >&2; exit 2; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/flyedge-instr.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
prepare_three bench/instr.sh "$TMP" 20
"$TMP/backend" -addr 127.0.0.1:9021 >"$TMP/backend.log" 2>&1 & pids+=($!)

echo "# $(date -u +%F) N=$N WARM=$WARM CONNS=$CONNS HEADERS=$(grep -c . <<<"$HEADERS" || true) lines; $(valgrind --version)"
printf '%-9s %-4s %10s %12s %12s\n' name test Ir/req zap.With/req flyedge/req
declare -A IR
for test in $TESTS; do
	for name in $NAMES; do
		url=${URL[$name:$test]}
		HOME=$TMP XDG_DATA_HOME=$TMP/data XDG_CONFIG_HOME=$TMP/config \
			GODEBUG=cpu.rdtscp=off,asyncpreemptoff=1 GOMAXPROCS=1 \
			valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/cg.$name.$test" \
			"$TMP/caddy" run --config "$TMP/$name.Caddyfile" --adapter caddyfile >"$TMP/$name.$test.log" 2>&1 &
		pid=$!
		pids+=("$pid")
		for _ in $(seq 300); do
			curl -ksf -m 2 -o /dev/null "$url" && break
			kill -0 "$pid" 2>/dev/null || break # it died: the check below says so
			sleep 0.5
		done
		served_by bench/instr.sh "$url" "$pid" "$TMP/$name.$test.log"
		run() { # h2load over HTTP/1.1, $1 requests; fails unless every one succeeded
			local out
			out=$(timeout 600 h2load --h1 -n "$1" -c "$CONNS" "${hdrs[@]}" "$url" 2>&1) || true
			grep -q "requests: $1 total, $1 started, $1 done, $1 succeeded" <<<"$out" || { echo "bench/instr.sh: $name $test: h2load: $(grep 'requests:' <<<"$out" || tail -2 <<<"$out")" >&2; return 1; }
		}
		[[ $WARM == 0 ]] || run "$WARM"
		callgrind_control -i on "$pid" >"$TMP/cc.log" 2>&1
		run "$N"
		callgrind_control -d "$pid" >>"$TMP/cc.log" 2>&1
		kill "$pid"
		wait "$pid" 2>/dev/null || true
		f=$TMP/cg.$name.$test.1 # the dump (-d); the file without a suffix is written at exit
		[[ -s $f ]] || { echo "bench/instr.sh: $name $test: callgrind wrote no dump ($f)" >&2; cat "$TMP/cc.log" >&2; exit 1; }
		total=$(callgrind_annotate "$f" | awk '/PROGRAM TOTALS/ && !n++ {gsub(",", "", $1); print $1}')
		[[ ${total:-0} -gt 0 ]] || { echo "bench/instr.sh: $name $test: no instructions counted" >&2; cat "$TMP/cc.log" >&2; exit 1; }
		# a function's cost may be split over rows, one per source file (inlining): add them up
		zapw=$(callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$f" | awk '/:go\.uber\.org\/zap\.\(\*Logger\)\.With / {gsub(",", "", $1); s += $1} END {print s + 0}')
		own=$(callgrind_annotate --auto=no --threshold=100 "$f" | awk '/:github\.com\/flyedge\/caddy-flyedge\// {gsub(",", "", $1); s += $1} END {print s + 0}')
		read -r ir zw ow < <(awk -v t="$total" -v z="${zapw:-0}" -v o="$own" -v n="$N" 'BEGIN {printf "%.0f %.0f %.0f\n", t / n, z / n, o / n}')
		printf '%-9s %-4s %10s %12s %12s\n' "$name" "$test" "$ir" "$zw" "$ow"
		IR[$name:$test]=$ir
	done
done
if [[ -n ${IR[caddy:h1]:-}${IR[caddy:tls]:-} ]]; then
	echo "# against plain Caddy"
	for test in $TESTS; do
		base=${IR[caddy:$test]:-}
		[[ -n $base ]] || continue
		for name in $NAMES; do
			[[ $name == caddy ]] && continue
			awk -v a="${IR[$name:$test]}" -v b="$base" -v n="$name" -v t="$test" 'BEGIN {printf "%-9s %-4s %.3fx\n", n, t, a / b}'
		done
	done
fi
