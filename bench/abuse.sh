#!/usr/bin/env bash
# A hostile tenant beside a victim: one flyedge edge serves app victim
# (HTTP, its machine a Go server on loopback) and app attacker (a
# pass-through TCP port and a UDP service on its dedicated IPv4 address,
# and HTTP on the shared one). The victim is probed at RATE requests/s
# through the edge before, during and after each attack (count, errors,
# p50, p99, the edge's RSS), and when an attack ends every port of the
# edge must serve again within 1 s. Each attack gets an edge of its own,
# run under a descriptor limit of EDGE_NOFILE. See bench/README.md.
#
#   bench/abuse.sh                                       # 6 attacks of 10 s, ~2 min
#   DURATION=5s PHASE=3s bench/abuse.sh                  # short, ~75 s
#   ATTACKS=idle,slowloris DURATION=5s bench/abuse.sh    # some of them
#   CADDY=/path/to/caddy bench/abuse.sh                  # a Caddy already built
set -euo pipefail
caddy=${CADDY:-}
if [ -n "$caddy" ]; then
	caddy=$(realpath "$caddy")
fi
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -z "$caddy" ]; then
	go build -o "$tmp/caddy" ./cmd/caddy
	caddy=$tmp/caddy
fi
go build -o "$tmp/abuse" ./bench/abuse
"$tmp/abuse" -caddy "$caddy" \
	-attacks "${ATTACKS:-idle,udp,nowhere,slowloris,toml,posts}" \
	-duration "${DURATION:-10s}" -phase "${PHASE:-5s}" -settle "${SETTLE:-5s}" \
	-rate "${RATE:-20}" -timeout "${TIMEOUT:-2s}" -edge-nofile "${EDGE_NOFILE:-4096}" \
	-conns "${CONNS:-10000}" -udp-pairs "${UDP_PAIRS:-20480}" -slow-conns "${SLOW_CONNS:-200}" \
	-checks "${CHECKS:-10000}" -posts "${POSTS:-256}" -read-header "${READ_HEADER:-10s}"
