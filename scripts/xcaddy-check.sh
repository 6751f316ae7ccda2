#!/usr/bin/env bash
# Builds Caddy with flyedge the way users do, with xcaddy, and checks that
# `caddy list-modules` shows every flyedge module.
#
# Users run:   xcaddy build --with github.com/flyedge/caddy-flyedge=.
# This script pins a dummy version (@v0.0.0=.) because module proxies that
# answer 403 for unknown paths make the plain local form fail.
set -euo pipefail
cd "$(dirname "$0")/.."

CADDY_VERSION=${CADDY_VERSION:-v2.11.9}
XCADDY=${XCADDY:-$(command -v xcaddy || echo "$(go env GOPATH)/bin/xcaddy")}
[ -x "$XCADDY" ] || { echo "xcaddy not found; install it with: go install github.com/caddyserver/xcaddy/cmd/xcaddy@v0.4.5" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$XCADDY" build "$CADDY_VERSION" \
	--with github.com/flyedge/caddy-flyedge@v0.0.0=. \
	--with github.com/mholt/caddy-l4@v0.1.2 \
	--output "$out/caddy"

modules=$("$out/caddy" list-modules)
missing=0
for id in $(cat scripts/modules.txt); do
	if ! grep -qx "$id" <<<"$modules"; then
		echo "xcaddy build: module $id is missing from caddy list-modules" >&2
		missing=1
	fi
done
[ "$missing" = 0 ] || exit 1
echo "xcaddy build: all $(wc -l < scripts/modules.txt) flyedge modules present"
