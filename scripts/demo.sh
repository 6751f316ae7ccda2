#!/usr/bin/env bash
# The README's main job: builds Caddy with flyedge into ./caddy (the
# binary the README's "Try it" commands use) and runs it on the demo
# config, Caddyfile.example. Extra arguments go to `caddy run`.
#
#   scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

echo "building Caddy with flyedge into ./caddy (the first build takes several minutes; later ones seconds)..." >&2
go build -o caddy ./cmd/caddy
echo "running ./caddy run --config Caddyfile.example (Ctrl-C stops it; try it from another terminal, see README.md)" >&2
exec ./caddy run --config Caddyfile.example "$@"
