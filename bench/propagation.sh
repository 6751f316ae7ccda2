#!/usr/bin/env bash
# How soon edges sharing a storage see each other's changes: 3 Caddy
# processes on a shared folder, then on PostgreSQL (caddy.storage.postgres,
# the server at 127.0.0.1:5432, a database of its own), 1,000 machine
# registrations made in turn on each edge, each timed until the two other
# edges answer for it. See bench/README.md.
#
#   bench/propagation.sh                      # ~15 min (the folder's 500 ms poll dominates)
#   CHANGES=100 bench/propagation.sh          # smoke
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/caddy" ./cmd/caddy
go run ./bench/propagation -caddy "$tmp/caddy" -changes "${CHANGES:-1000}" -storages "${STORAGES:-file,postgres}"
