#!/usr/bin/env bash
# UDP round trips through flyedge, beside the direct path and nginx's
# stream udp proxy, in one run on loopback: an echo machine, FLOWS flows
# that each send a datagram and wait for its echo (200 ms, else lost),
# REPS interleaved measurements of DURATION per path; the median by rate
# is printed. Needs nginx with the stream module for its row (Debian:
# apt-get install nginx-light libnginx-mod-stream). See bench/README.md.
#
#   bench/udp.sh                               # ~1 min
#   FLOWS=1 REPS=1 DURATION=2s bench/udp.sh    # smoke
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/caddy" ./cmd/caddy
go run ./bench/udp -caddy "$tmp/caddy" -flows "${FLOWS:-32}" -reps "${REPS:-3}" -duration "${DURATION:-5s}" -size "${SIZE:-64}"
