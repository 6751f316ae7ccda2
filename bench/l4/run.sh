#!/usr/bin/env bash
# TCP pass-through anchors on loopback: direct vs caddy-l4 / HAProxy / nginx stream / socat,
# plus flyedge's fly_proxy layer4 handler.
#
# Origin: a copy of the shared harness /work/shared/bench/l4/run.sh (read-only there; it says
# a project joins "by adding a path in run.sh beside caddy_l4"). Changes from the original,
# all marked "flyedge:" below: the path `flyedge` (ports 15206/15216, our Caddy with
# flyedge.Caddyfile beside this file), the knobs SHARED, FLYEDGE_CADDY and FLYEDGE_CADDYFILE,
# and the harness's own files (caddy-l4.json, haproxy.cfg, nginx.conf, conncount/) read from
# $SHARED instead of being copied. Everything else (measurement, CPU accounting, summary)
# is unchanged, so the rows stay comparable with the shared harness's. Entry point: ../l4.sh.
#
# Backends (127.0.0.1):  iperf3 -s on 15201 (bulk tests), Go echo server on 15211 (conn test)
# Paths, each proxy plain TCP pass-through with its defaults (configs beside this file):
#   path      bulk port -> 15201   conn port -> 15211
#   direct    15201                15211
#   caddy_l4  15202                15212   caddy run --config caddy-l4.json (admin off)
#   haproxy   15203                15213   haproxy -db, mode tcp (no splice, the default)
#   nginx     15204                15214   nginx stream module, 'worker_processes auto'
#   socat     15205                15215   socat TCP-LISTEN,fork (one process per connection)
#   flyedge   15206                15216   our caddy run --config flyedge.Caddyfile --adapter caddyfile
#                                          (admin off): layer4 route { fly_proxy }, app bulk = service
#                                          15201 on edge port 15206, app conn = 15211 on 15216
# Tests:
#   bulk-1  iperf3 -c ... -t $DURATION          one stream, client->server   (Gbit/s)
#   bulk-4  iperf3 -c ... -t $DURATION -P 4     four streams                  (Gbit/s)
#   conn    conncount: $WORKERS workers, each loops dial / write 1 B / read 1 B echo / close,
#           for $DURATION                                                     (conn/s)
# Every (test, path) runs $REPS times; paths are interleaved within each rep and their order
# rotates per rep. During each run the proxy's CPU time (utime+stime, plus cutime+cstime of
# reaped children and utime+stime of live children: nginx workers, socat forks) is read from
# /proc/PID/stat, and the host's busy share from /proc/stat.
# Everything shares the same 2 cores (no pinning): figures are "whole box" anchors.
#
# Usage: ./run.sh   (needs iperf3 jq ss go; haproxy, nginx + libnginx-mod-stream, socat optional:
#                    a missing one is skipped with a note)
# Environment (defaults in brackets):
#   CADDY [caddy on PATH]  caddy with caddy-l4;  GO [/usr/local/go/bin/go]
#   flyedge: FLYEDGE_CADDY [$CADDY] caddy with flyedge's modules (layer4.handlers.fly_proxy);
#            FLYEDGE_CADDYFILE [flyedge.Caddyfile beside this file; __RUN__ -> run dir];
#            SHARED [../../../shared/bench/l4 from this file] the harness's configs and conncount/
#   TARGETS ["direct caddy_l4 flyedge haproxy nginx socat"]  TESTS ["bulk1 bulk4 conn"]
#     flyedge: or any of "tlsbulk1 tlsbulk4 tlsconn" (TLS at the proxy; tls/ beside this file)
#   REPS [3]  DURATION [8] (s)  WORKERS [32]  WARMUP [2] (s per test and path)  PAUSE [1] (s)
#   OUTDIR [/tmp/l4bench/<timestamp>]
# Output: table on stdout (and $OUTDIR/summary.txt); raw rows $OUTDIR/raw.tsv; logs $OUTDIR/run/.
# Stops everything it started, by PID, on exit, error or signal.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHARED=${SHARED:-"$HERE/../../../shared/bench/l4"}   # flyedge: the shared harness's files, not copied
CADDY=${CADDY:-$(command -v caddy)}
FLYEDGE_CADDY=${FLYEDGE_CADDY:-$CADDY}                        # flyedge
FLYEDGE_CADDYFILE=${FLYEDGE_CADDYFILE:-"$HERE/flyedge.Caddyfile"}  # flyedge
GO=${GO:-/usr/local/go/bin/go}
TARGETS=${TARGETS:-"direct caddy_l4 flyedge haproxy nginx socat"}
TESTS=${TESTS:-"bulk1 bulk4 conn"}
REPS=${REPS:-3}
DURATION=${DURATION:-8}
WORKERS=${WORKERS:-32}
WARMUP=${WARMUP:-2}
PAUSE=${PAUSE:-1}
OUTDIR=${OUTDIR:-/tmp/l4bench/$(date +%Y%m%d-%H%M%S)}
RUN=$OUTDIR/run
RAW=$OUTDIR/raw.tsv
LOG=$OUTDIR/run.log
declare -A BULK_PORT=([direct]=15201 [caddy_l4]=15202 [haproxy]=15203 [nginx]=15204 [socat]=15205 [flyedge]=15206)
declare -A CONN_PORT=([direct]=15211 [caddy_l4]=15212 [haproxy]=15213 [nginx]=15214 [socat]=15215 [flyedge]=15216)
# flyedge: TLS rows (tests tlsbulk1 tlsbulk4 tlsconn): TLS from the client to the proxy, plaintext to
# the backend (tlsload's sink on 15220, conncount's echo on 15211); direct = the backend does TLS itself
declare -A TLSBULK_PORT=([direct]=15221 [caddy_l4]=15222 [haproxy]=15223 [nginx]=15224 [flyedge]=15226)
declare -A TLSCONN_PORT=([direct]=15231 [caddy_l4]=15232 [haproxy]=15233 [nginx]=15234 [flyedge]=15236)
SINK_PORT=15220
TLSDIR=$HERE/tls
WANT_TLS=0; [[ " $TESTS " == *" tls"* ]] && WANT_TLS=1
port_of() {  # test path -> the path's port for that test, or "" (socat has no TLS rows)
  case $1 in
    bulk1|bulk4) echo "${BULK_PORT[$2]:-}" ;;
    conn) echo "${CONN_PORT[$2]:-}" ;;
    tlsbulk1|tlsbulk4) echo "${TLSBULK_PORT[$2]:-}" ;;
    tlsconn) echo "${TLSCONN_PORT[$2]:-}" ;;
  esac
}

mkdir -p "$RUN/caddyhome"
: > "$RAW"
T0=$(date +%s)
log() { echo "[$(date +%T)] $*" | tee -a "$LOG" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------- process bookkeeping: only PIDs this script started ----------
PIDS=()
declare -A BULK_PID=() CONN_PID=() TLSBULK_PID=() TLSCONN_PID=()   # path -> PID charged with the proxy's CPU time
IPERF_PID=""
stop_pid_list() {  # pids...: TERM, wait up to 5 s, then KILL
  local p alive
  (($#)) || return 0
  for p in "$@"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 50); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "$@"; do kill -KILL "$p" 2>/dev/null; done
  for p in "$@"; do wait "$p" 2>/dev/null; done
  return 0
}
stop_all() {
  local p kids=()
  # children of our processes (nginx workers, socat per-connection forks) go too
  for p in "${PIDS[@]}"; do kids+=($(ps -o pid= --ppid "$p" 2>/dev/null)); done
  stop_pid_list "${PIDS[@]}" "${kids[@]}"
  PIDS=()
}
trap 'stop_all' EXIT
trap 'exit 130' INT TERM

start_bg() {  # logname cmd... ; sets LASTPID
  "${@:2}" >>"$RUN/$1.log" 2>&1 &
  LASTPID=$!
  PIDS+=("$LASTPID")
}

# utime+stime+cutime+cstime of each PID, plus utime+stime of its live children (clock ticks)
cpu_ticks() {
  local p c tot=0 v
  for p in "$@"; do
    v=$(awk '{sub(/^.*\) /,""); print $12+$13+$14+$15}' "/proc/$p/stat" 2>/dev/null) && tot=$((tot + ${v:-0}))
    for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do
      v=$(awk '{sub(/^.*\) /,""); print $12+$13}' "/proc/$c/stat" 2>/dev/null) && tot=$((tot + ${v:-0}))
    done
  done
  echo "$tot"
}
host_ticks() { awk '/^cpu /{t=0; for(i=2;i<=9;i++) t+=$i; print t-$5-$6, t}' /proc/stat; }  # busy total
CLK_TCK=$(getconf CLK_TCK)

port_busy() { [[ -n $(ss -Hltn "sport = :$1") ]]; }
wait_listen() {  # port: up to 10 s
  for _ in $(seq 100); do port_busy "$1" && return 0; sleep 0.1; done
  return 1
}

# ---------- prerequisites ----------
for t in iperf3 jq ss ps awk timeout; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 2; }; done
[[ -x "$CADDY" ]] || { echo "no caddy at $CADDY" >&2; exit 2; }
[[ -f "$SHARED/caddy-l4.json" && -d "$SHARED/conncount" ]] || { echo "shared harness files not found in $SHARED (set SHARED=<dir>)" >&2; exit 2; }  # flyedge
MODS=$("$CADDY" list-modules 2>/dev/null)   # captured first: grep -q + pipefail would race on SIGPIPE
grep -qx 'layer4.handlers.proxy' <<<"$MODS" || { echo "$CADDY lacks layer4.handlers.proxy" >&2; exit 2; }
PATHS=()
for t in $TARGETS; do
  case $t in
    haproxy) command -v haproxy >/dev/null || { log "skipping haproxy: not installed (apt-get install haproxy)"; continue; } ;;
    nginx)   { command -v nginx >/dev/null && [[ -f /usr/lib/nginx/modules/ngx_stream_module.so ]]; } ||
               { log "skipping nginx: nginx or its stream module missing (apt-get install nginx libnginx-mod-stream)"; continue; } ;;
    socat)   command -v socat >/dev/null || { log "skipping socat: not installed"; continue; } ;;
    direct|caddy_l4) ;;
    flyedge)  # flyedge: a missing binary, module or config is an error, not a skip
      [[ -x "$FLYEDGE_CADDY" && -f "$FLYEDGE_CADDYFILE" ]] || { echo "flyedge: need FLYEDGE_CADDY ($FLYEDGE_CADDY) and FLYEDGE_CADDYFILE ($FLYEDGE_CADDYFILE)" >&2; exit 2; }
      FMODS=$("$FLYEDGE_CADDY" list-modules 2>/dev/null)
      grep -qx 'layer4.handlers.fly_proxy' <<<"$FMODS" || { echo "$FLYEDGE_CADDY lacks layer4.handlers.fly_proxy" >&2; exit 2; } ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
  PATHS+=("$t")
done
for t in "${PATHS[@]}"; do
  for p in "${BULK_PORT[$t]}" "${CONN_PORT[$t]}" ${TLSBULK_PORT[$t]:-} ${TLSCONN_PORT[$t]:-}; do port_busy "$p" && { echo "port $p already in use; aborting" >&2; exit 2; }; done
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null
CC=$RUN/conncount
( cd "$SHARED/conncount" && "$GO" build -o "$CC" . ) || { echo "conncount build failed" >&2; exit 2; }
TL=$RUN/tlsload
if ((WANT_TLS)); then  # flyedge: the TLS load generator and backend, and an ECDSA P-256 certificate
  command -v openssl >/dev/null || { echo "missing openssl" >&2; exit 2; }
  ( cd "$HERE/tlsload" && "$GO" build -o "$TL" . ) || { echo "tlsload build failed" >&2; exit 2; }
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj /CN=bench.test \
    -addext subjectAltName=DNS:bench.test -keyout "$RUN/bench.key" -out "$RUN/bench.crt" 2>/dev/null ||
    { echo "openssl could not make the certificate" >&2; exit 2; }
  cat "$RUN/bench.crt" "$RUN/bench.key" > "$RUN/bench.pem"
fi

{
  echo "host: $(nproc) cpus, $(uname -r), $(. /etc/os-release; echo "$PRETTY_NAME"), loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "iperf3: $(iperf3 --version | head -1)"
  echo "caddy: $("$CADDY" version) ; $("$CADDY" list-modules --versions 2>/dev/null | awk '$1=="layer4.handlers.proxy"')"
  [[ " ${PATHS[*]} " == *" flyedge "* ]] && echo "flyedge caddy: $FLYEDGE_CADDY ; $("$FLYEDGE_CADDY" version) ; $("$FLYEDGE_CADDY" list-modules --versions 2>/dev/null | awk '$1=="layer4.handlers.fly_proxy"')"
  command -v haproxy >/dev/null && echo "haproxy: $(haproxy -v | head -1)"
  command -v nginx >/dev/null && echo "nginx: $(nginx -v 2>&1)"
  command -v socat >/dev/null && echo "socat: $(socat -V 2>/dev/null | grep 'socat version')"
  echo "go (conncount): $("$GO" version)"
  echo "params: paths=${PATHS[*]} tests=$TESTS reps=$REPS duration=${DURATION}s conn-workers=$WORKERS warmup=${WARMUP}s ulimit-n=$(ulimit -n)"
} > "$OUTDIR/versions.txt"
cat "$OUTDIR/versions.txt" >&2

# ---------- start ----------
start_iperf() {
  start_bg iperf3 iperf3 -s -B 127.0.0.1 -p "${BULK_PORT[direct]}"
  IPERF_PID=$LASTPID
  wait_listen "${BULK_PORT[direct]}" || die "iperf3 server did not listen"
}
restart_iperf() {  # clears an iperf3 server left mid-test by a failed client
  log "restarting iperf3 server"
  stop_pid_list "$IPERF_PID"
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p != "$IPERF_PID" ]] && keep+=("$p"); done
  PIDS=("${keep[@]}")
  start_iperf
}

start_iperf
start_bg echo "$CC" -serve "127.0.0.1:${CONN_PORT[direct]}"
if ((WANT_TLS)); then
  start_bg tlssink "$TL" -serve "127.0.0.1:$SINK_PORT" -sink
  start_bg tlssink-direct "$TL" -serve "127.0.0.1:${TLSBULK_PORT[direct]}" -sink -cert "$RUN/bench.crt" -key "$RUN/bench.key"
  start_bg tlsecho-direct "$TL" -serve "127.0.0.1:${TLSCONN_PORT[direct]}" -cert "$RUN/bench.crt" -key "$RUN/bench.key"
  wait_listen "$SINK_PORT" || die "tlsload sink did not listen"
fi
start_tls() {  # path: the path's TLS-terminating process (its own, so its CPU is its own)
  local t=$1
  case $t in
    caddy_l4|flyedge)
      sed "s#__RUN__#$RUN#g" "$TLSDIR/${t//_/-}-tls.json" > "$RUN/$t-tls.json"
      local bin=$CADDY; [[ $t == flyedge ]] && bin=$FLYEDGE_CADDY
      start_bg "$t-tls" env HOME="$RUN/caddyhome" XDG_DATA_HOME="$RUN/caddyhome" XDG_CONFIG_HOME="$RUN/caddyhome" \
        "$bin" run --config "$RUN/$t-tls.json" ;;
    haproxy)
      sed "s#__RUN__#$RUN#g" "$TLSDIR/haproxy-tls.cfg" > "$RUN/haproxy-tls.cfg"
      start_bg haproxy-tls haproxy -db -f "$RUN/haproxy-tls.cfg" ;;
    nginx)
      sed "s#__RUN__#$RUN#g" "$TLSDIR/nginx-tls.conf" > "$RUN/nginx-tls.conf"
      start_bg nginx-tls nginx -c "$RUN/nginx-tls.conf" -p "$RUN/" -e "$RUN/nginx-tls.error.log" ;;
    *) return ;;
  esac
  TLSBULK_PID[$t]=$LASTPID; TLSCONN_PID[$t]=$LASTPID
}
for t in "${PATHS[@]}"; do
  case $t in
    direct) continue ;;
    caddy_l4)
      cp "$SHARED/caddy-l4.json" "$RUN/caddy-l4.json"
      start_bg caddy env HOME="$RUN/caddyhome" XDG_DATA_HOME="$RUN/caddyhome" XDG_CONFIG_HOME="$RUN/caddyhome" \
        "$CADDY" run --config "$RUN/caddy-l4.json"
      BULK_PID[$t]=$LASTPID; CONN_PID[$t]=$LASTPID ;;
    flyedge)  # flyedge: as caddy_l4, with our Caddy and a Caddyfile using fly_proxy
      sed "s#__RUN__#$RUN#g" "$FLYEDGE_CADDYFILE" > "$RUN/flyedge.Caddyfile"
      start_bg flyedge env HOME="$RUN/caddyhome" XDG_DATA_HOME="$RUN/caddyhome" XDG_CONFIG_HOME="$RUN/caddyhome" \
        "$FLYEDGE_CADDY" run --config "$RUN/flyedge.Caddyfile" --adapter caddyfile
      BULK_PID[$t]=$LASTPID; CONN_PID[$t]=$LASTPID ;;
    haproxy)
      cp "$SHARED/haproxy.cfg" "$RUN/haproxy.cfg"
      start_bg haproxy haproxy -db -f "$RUN/haproxy.cfg"
      BULK_PID[$t]=$LASTPID; CONN_PID[$t]=$LASTPID ;;
    nginx)
      sed "s#__RUN__#$RUN#g" "$SHARED/nginx.conf" > "$RUN/nginx.conf"
      start_bg nginx nginx -c "$RUN/nginx.conf" -p "$RUN/" -e "$RUN/nginx.error.log"
      BULK_PID[$t]=$LASTPID; CONN_PID[$t]=$LASTPID ;;
    socat)
      start_bg socat-bulk socat TCP4-LISTEN:"${BULK_PORT[$t]}",bind=127.0.0.1,reuseaddr,fork,backlog=4096 TCP4:127.0.0.1:"${BULK_PORT[direct]}"
      BULK_PID[$t]=$LASTPID
      start_bg socat-conn socat TCP4-LISTEN:"${CONN_PORT[$t]}",bind=127.0.0.1,reuseaddr,fork,backlog=4096 TCP4:127.0.0.1:"${CONN_PORT[direct]}"
      CONN_PID[$t]=$LASTPID ;;
  esac
done
if ((WANT_TLS)); then
  for t in "${PATHS[@]}"; do [[ $t != direct ]] && start_tls "$t"; done
fi
for t in "${PATHS[@]}"; do
  for p in "${BULK_PORT[$t]}" "${CONN_PORT[$t]}"; do
    wait_listen "$p" || die "$t: nothing listens on $p (see $RUN/*.log)"
  done
  if ((WANT_TLS)); then
    for p in ${TLSBULK_PORT[$t]:-} ${TLSCONN_PORT[$t]:-}; do
      wait_listen "$p" || die "$t: nothing listens on $p (see $RUN/*.log)"
    done
  fi
done
log "started; pids: ${PIDS[*]}"

# ---------- one run ----------
# raw row: rep test path value unit amount(bytes|conns) proxy_cpu_s wall_s host_busy_pct errors
run_one() {  # test path seconds -> sets R_VALUE R_AMOUNT R_ERR R_OUT
  local test=$1 t=$2 secs=$3 out par=()
  R_VALUE=NA; R_AMOUNT=0; R_ERR=0
  case $test in
    bulk1|bulk4)
      [[ $test == bulk4 ]] && par=(-P 4)
      out=$(timeout $((secs + 30)) iperf3 -c 127.0.0.1 -p "${BULK_PORT[$t]}" -t "$secs" "${par[@]}" -J 2>&1)
      R_OUT=$out
      if jq -e '.end.sum_received.bytes > 0 and (.error == null)' >/dev/null 2>&1 <<<"$out"; then
        R_VALUE=$(jq -r '.end.sum_received.bits_per_second / 1e9' <<<"$out")
        R_AMOUNT=$(jq -r '.end.sum_received.bytes' <<<"$out")
      else
        R_ERR=1; restart_iperf
      fi ;;
    conn|tlsconn)  # conncount and tlsload print the same line
      if [[ $test == conn ]]; then
        out=$(timeout $((secs + 30)) "$CC" -target "127.0.0.1:${CONN_PORT[$t]}" -c "$WORKERS" -d "${secs}s" 2>&1)
      else
        out=$(timeout $((secs + 30)) "$TL" -target "127.0.0.1:${TLSCONN_PORT[$t]}" -c "$WORKERS" -d "${secs}s" 2>&1)
      fi
      R_OUT=$out
      if [[ $out =~ conns=([0-9]+)\ errors=([0-9]+)\ seconds=[0-9.]+\ rate=([0-9.]+) ]]; then
        R_AMOUNT=${BASH_REMATCH[1]}; R_ERR=${BASH_REMATCH[2]}; R_VALUE=${BASH_REMATCH[3]}
      else
        R_ERR=1
      fi ;;
    tlsbulk1|tlsbulk4)
      [[ $test == tlsbulk4 ]] && par=(-P 4)
      out=$(timeout $((secs + 30)) "$TL" -target "127.0.0.1:${TLSBULK_PORT[$t]}" -bulk "${par[@]}" -d "${secs}s" 2>&1)
      R_OUT=$out
      if [[ $out =~ bytes=([0-9]+)\ errors=([0-9]+)\ seconds=[0-9.]+\ gbps=([0-9.]+) ]]; then
        R_AMOUNT=${BASH_REMATCH[1]}; R_ERR=${BASH_REMATCH[2]}; R_VALUE=${BASH_REMATCH[3]}
      else
        R_ERR=1
      fi ;;
  esac
}

measure() {  # test path rep
  local test=$1 t=$2 rep=$3 pids=() c0 c1 h0 h1 w0 w1 cpu wall busy unit
  if [[ $t != direct ]]; then
    case $test in
      conn) pids=("${CONN_PID[$t]}") ;;
      tlsconn) pids=("${TLSCONN_PID[$t]}") ;;
      tlsbulk*) pids=("${TLSBULK_PID[$t]}") ;;
      *) pids=("${BULK_PID[$t]}") ;;
    esac
  fi
  [[ $test == *conn ]] && unit=conn/s || unit=Gbit/s
  c0=$(cpu_ticks "${pids[@]}"); read -r hb0 ht0 < <(host_ticks); w0=$(date +%s.%N)
  run_one "$test" "$t" "$DURATION"
  w1=$(date +%s.%N); read -r hb1 ht1 < <(host_ticks); c1=$(cpu_ticks "${pids[@]}")
  echo "$R_OUT" > "$RUN/out.$test.$t.$rep.txt"
  wall=$(awk -v a="$w0" -v b="$w1" 'BEGIN{printf "%.3f", b-a}')
  busy=$(awk -v b=$((hb1 - hb0)) -v t=$((ht1 - ht0)) 'BEGIN{printf "%.0f", t ? 100*b/t : 0}')
  if [[ $t == direct ]]; then cpu=NA; else cpu=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" 'BEGIN{printf "%.2f", d/hz}'); fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rep" "$test" "$t" "$R_VALUE" "$unit" "$R_AMOUNT" "$cpu" "$wall" "$busy" "$R_ERR" >> "$RAW"
  log "rep$rep $test $t: $R_VALUE $unit amount=$R_AMOUNT proxy_cpu=${cpu}s wall=${wall}s host_busy=${busy}% errors=$R_ERR"
}

# ---------- warm-up + sanity (every path must carry traffic before we measure) ----------
for test in $TESTS; do
  for t in "${PATHS[@]}"; do
    [[ -n $(port_of "$test" "$t") ]] || continue
    run_one "$test" "$t" "$WARMUP"
    [[ $R_VALUE != NA && $R_ERR == 0 ]] || die "warm-up $test via $t failed: $(tail -c 400 <<<"$R_OUT")"
  done
done
log "warm-up done, all paths carry traffic"

# ---------- measure: rep-major, paths interleaved, order rotated per rep ----------
n=${#PATHS[@]}
for rep in $(seq "$REPS"); do
  order=()
  for ((i = 0; i < n; i++)); do order+=("${PATHS[$(((i + rep - 1) % n))]}"); done
  for test in $TESTS; do
    for t in "${order[@]}"; do
      [[ -n $(port_of "$test" "$t") ]] || continue
      measure "$test" "$t" "$rep"
      sleep "$PAUSE"
    done
  done
done
stop_all

# ---------- summary ----------
{
  echo "# $REPS interleaved runs of ${DURATION}s each; median [min-max]; 'vs direct' = median / direct median"
  echo "# proxy CPU = utime+stime of the proxy process(es) during the run (loopback softirq work may be charged elsewhere);"
  echo "#   bulk: CPU-ms per GB (1e9 B) received by iperf3 (tls-1/tls-4: written by tlsload); conn, tlsconn: CPU-us per completed connection; cores = CPU-s / wall-s"
  echo "# host busy = all 2 cores (load generator, backend and proxy share them)"
  awk -F'\t' -v order="$TESTS" -v paths="${PATHS[*]}" '
    function sortn(s, a,   n,i,j,x){ n=split(s,a," "); for(i=2;i<=n;i++){x=a[i]+0;j=i-1; while(j>0 && a[j]+0>x){a[j+1]=a[j];j--} a[j+1]=x} return n }
    function med(s,   a,n){ n=sortn(s,a); if(n==0) return "NA"; return (n%2)? a[(n+1)/2] : (a[n/2]+a[n/2+1])/2 }
    function mn(s,   a,n){ n=sortn(s,a); return n? a[1] : "NA" }
    function mx(s,   a,n){ n=sortn(s,a); return n? a[n] : "NA" }
    { k=$2 SUBSEP $3; U[k]=$5; E[k]+=$10
      if($4!="NA"){ V[k]=V[k] " " $4
        if($7!="NA"){ per = ($2 ~ /conn$/) ? ($6>0 ? $7*1e6/$6 : "") : ($6>0 ? $7*1000/($6/1e9) : "")
                      if(per!="") P[k]=P[k] " " per; C[k]=C[k] " " $7/$8 }
        B[k]=B[k] " " $9 } }
    END{
      nt=split(order,T," "); np=split(paths,Pa," ")
      printf "%-9s %-6s %9s  %-17s %-7s %7s  %-16s %6s %5s %5s\n","path","test","median","min-max","unit","vs dir","proxy CPU/unit","cores","host%","errs"
      for(i=1;i<=nt;i++){ test=T[i]; d=med(V[test SUBSEP "direct"])
        for(j=1;j<=np;j++){ k=test SUBSEP Pa[j]; if(!(k in U)) continue
          m=med(V[k]); fmt=(test ~ /conn$/) ? "%.0f" : "%.2f"
          rng=sprintf(fmt "-" fmt, mn(V[k]), mx(V[k]))
          vs=(d!="NA" && d>0 && m!="NA") ? sprintf("%.0f%%", 100*m/d) : "-"
          pu=(P[k]=="") ? "-" : sprintf((test ~ /conn$/) ? "%.1f us/conn" : "%.0f ms/GB", med(P[k]))
          co=(C[k]=="") ? "-" : sprintf("%.2f", med(C[k]))
          tn=(test=="bulk1") ? "bulk-1" : (test=="bulk4") ? "bulk-4" : (test=="tlsbulk1") ? "tls-1" : (test=="tlsbulk4") ? "tls-4" : test
          printf "%-9s %-6s %9s  %-17s %-7s %7s  %-16s %6s %4.0f%% %5d\n", Pa[j], tn, sprintf(fmt, m), rng, U[k], vs, pu, co, med(B[k]), E[k]
        } }
    }' "$RAW"
  echo "# elapsed: $(( $(date +%s) - T0 ))s; raw: $RAW; logs: $RUN/"
} | tee "$OUTDIR/summary.txt"
