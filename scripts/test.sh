#!/usr/bin/env bash
# The whole test suite: formatting, vet, the race-enabled tests (which
# build and run a real Caddy with flyedge), and the xcaddy build check.
# It installs what it needs: xcaddy (pinned, with go install) and, where
# it can (root and apt-get), the peers some end-to-end tests run beside
# the edge: nginx and HAProxy as PROXY protocol receivers, pgbouncer,
# and nftables and iproute2 for the egress rules test (which also needs
# root, to create network namespaces). Without them those tests are skipped, except under CI=true, where they
# fail. PostgreSQL tests need the server at 127.0.0.1:5432.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in nginx:nginx haproxy:haproxy pgbouncer:pgbouncer nft:nftables ip:iproute2; do
	command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		echo "== installing ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq "${missing[@]}" >/dev/null
	else
		echo "== ${missing[*]} missing (install them as root: apt-get install ${missing[*]}); their tests will be skipped" >&2
	fi
fi

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
