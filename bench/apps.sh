#!/usr/bin/env bash
# Apps at scale: the start time and memory of an edge with 1,000, 10,000
# and 100,000 apps (one service each, http on the web port and tls+http on
# the TLS port, two machines), defined in the config or created through
# the admin API; the latency of 1,000 app creates, updates and deletes
# through the admin API while other apps serve requests; and the same
# change as a Caddy config load. See bench/README.md.
#
#   bench/apps.sh                                   # ~8 min
#   APPS=1000,10000 CHANGES=300 bench/apps.sh       # smoke, ~1 min
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/caddy" ./cmd/caddy
go run ./bench/apps -caddy "$tmp/caddy" -apps "${APPS:-1000,10000,100000}" -modes "${MODES:-config,api}" -changes "${CHANGES:-1000}"
