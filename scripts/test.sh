#!/usr/bin/env bash
# The whole test suite: formatting, vet, the race-enabled tests (which
# build and run a real Caddy with flyedge), and the xcaddy build check.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change: $unformatted" >&2
	exit 1
fi

echo "== go vet"
go vet ./...

echo "== go test -race"
go test -race -count=1 -timeout 20m ./...

echo "== xcaddy build"
scripts/xcaddy-check.sh
