#!/usr/bin/env bash
# HTTP benchmark of the flyedge chain (fly_headers + `dynamic fly` upstreams +
# `lb_policy fly` + reverse_proxy) against plain Caddy reverse_proxy with the
# equivalent header_up lines, nginx and HAProxy, in one run, on loopback.
#
# It builds this repo's Caddy and hands it to the shared harness
# ../shared/bench/http/run.sh twice: as the "caddy" peer (our build has the
# standard modules, so the baseline and flyedge rows share one Caddy and Go
# version) and as the extra proxy "flyedge" with bench/http.Caddyfile.
#
# Usage: bench/http.sh                                   (full run, ~13 min with the replay comparison)
#        MODES=unpinned TESTS="h1 tls h2" REPS=1 DURATION=3 H2_N=20000 bench/http.sh   (smoke)
# Knobs (environment, passed through to run.sh; see bench/README.md):
#   PEERS MODES TESTS REPS DURATION THREADS CONNS H2_N H2_C H2_M H2_T
#   PROXY_CPUS LOAD_CPUS OUTDIR GO
#   NETNS=1   run the harness in a private network namespace (root only), for
#             when its fixed ports are taken, e.g. 8443 by the Caddyfile.example demo
#   HARNESS=<dir of run.sh>   (default: <repo>/../shared/bench/http)
#   REPLAY=0  skip the fly-replay comparison that follows the harness
#             (bench/replay.sh with REPS=REPLAY_REPS [REPS] and DURATION)
#   LIMITS="requests 10000 20000"   give the flyedge app's service this
#             concurrency line, so the limits' accounting runs on every request
#             (limits that never bind: the cost of keeping them)
set -euo pipefail

BENCH=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH/.." && pwd)
HARNESS=${HARNESS:-"$BENCH/../../shared/bench/http"}   # i.e. "$(dirname "$0")/../../shared/bench/http"
RUNSH=$HARNESS/run.sh
CADDYFILE=$BENCH/http.Caddyfile

# ---------- prerequisites ----------
declare -A PKG=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [h2load]=nghttp2-client
                [curl]=curl [openssl]=openssl [taskset]=util-linux [ss]=iproute2)
missing=()
for t in nginx haproxy wrk h2load curl openssl taskset ss; do
  command -v "$t" >/dev/null || missing+=("$t")
done
if ((${#missing[@]})); then
  pkgs=$(for t in "${missing[@]}"; do echo "${PKG[$t]}"; done | sort -u | tr '\n' ' ')
  echo "bench/http.sh: missing tools: ${missing[*]}" >&2
  echo "install them with:  apt-get install -y ${pkgs% }" >&2
  exit 2
fi
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
[[ -x "$GO" ]] || { echo "bench/http.sh: no go toolchain (set GO=/path/to/go)" >&2; exit 2; }
export GO   # run.sh builds its backend with $GO
[[ -x "$RUNSH" ]] || { echo "bench/http.sh: harness not found at $RUNSH (set HARNESS=<dir>)" >&2; exit 2; }
[[ -f "$CADDYFILE" ]] || { echo "bench/http.sh: missing $CADDYFILE" >&2; exit 2; }
NETNS=${NETNS:-0}
if [[ $NETNS == 1 ]]; then
  command -v unshare >/dev/null && command -v ip >/dev/null || { echo "bench/http.sh: NETNS=1 needs unshare and ip" >&2; exit 2; }
else
  # run.sh's fixed ports (backend 9001, direct 9002, per peer http/https, flyedge 8084/8444)
  declare -A PORTS=([nginx]="8081 8441" [haproxy]="8082 8442" [caddy]="8083 8443")
  busy=()
  for p in 9001 9002 8084 8444 $(for t in ${PEERS:-nginx haproxy caddy}; do echo "${PORTS[$t]:-}"; done); do
    ss -Hltn "sport = :$p" | grep -q . && busy+=("$p")
  done
  if ((${#busy[@]})); then
    echo "bench/http.sh: port(s) ${busy[*]} already in use:" >&2
    for p in "${busy[@]}"; do ss -Hltnp "sport = :$p" >&2; done
    echo "stop that server, or run the benchmark in its own network namespace: NETNS=1 $0 (root)" >&2
    exit 2
  fi
fi

# ---------- build our Caddy ----------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/flyedge-bench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
echo "bench/http.sh: building $REPO/cmd/caddy" >&2
(cd "$REPO" && "$GO" build -o "$TMP/caddy" ./cmd/caddy)
if [[ -n ${LIMITS:-} ]]; then
  sed "s/^\(\t*\)port 8444 tls http$/&\n\1concurrency $LIMITS/" "$CADDYFILE" > "$TMP/http.Caddyfile"
  grep -q "concurrency $LIMITS" "$TMP/http.Caddyfile" || { echo "bench/http.sh: LIMITS: no port 8444 line to add it after" >&2; exit 2; }
  CADDYFILE=$TMP/http.Caddyfile
fi
# Fail early, with Caddy's own message, if the template does not adapt.
"$TMP/caddy" adapt --config "$CADDYFILE" --adapter caddyfile >/dev/null

# ---------- run the harness ----------
# Not exec'd, so the trap removes the binary afterwards; run.sh stops its
# own processes on exit and on Ctrl-C.
WRAP=()
[[ $NETNS == 1 ]] && WRAP=(unshare -n bash -c 'ip link set lo up && exec "$@"' netns)
set +e
CADDY="$TMP/caddy" \
EXTRA_CADDY="$TMP/caddy" EXTRA_CADDYFILE="$CADDYFILE" EXTRA_NAME=flyedge \
EXTRA_HTTP_PORT=8084 EXTRA_HTTPS_PORT=8444 \
  "${WRAP[@]}" "$RUNSH"
rc=$?
# ---------- fly-replay of a 1 KiB POST, in the same run ----------
if [[ $rc == 0 && ${REPLAY:-1} == 1 ]]; then
  echo
  echo "# fly-replay of a 1 KiB POST against the same POST answered at once (bench/replay.sh)"
  REPS=${REPLAY_REPS:-${REPS:-3}} DURATION=${DURATION:-10} "${WRAP[@]}" "$BENCH/replay.sh"
  rc=$?
fi
exit $rc
