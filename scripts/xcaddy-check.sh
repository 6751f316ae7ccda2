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
XCADDY_VERSION=v0.4.5
XCADDY=${XCADDY:-$(command -v xcaddy || echo "$(go env GOPATH)/bin/xcaddy")}
if [ ! -x "$XCADDY" ]; then
	echo "installing xcaddy $XCADDY_VERSION"
	go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION"
	XCADDY="$(go env GOPATH)/bin/xcaddy"
fi

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

# the binary must hold the module versions the tests ran with (go.mod's)
go list -m -f '{{if not .Main}}{{.Path}} {{.Version}}{{end}}' all | sort > "$out/tested"
go version -m "$out/caddy" | awk '$1 == "dep" && $4 != "=>" {print $2, $3}' | sort > "$out/built"
differ=$(join "$out/tested" "$out/built" | awk '$2 != $3 {print "  " $1 ": tested " $2 ", built " $3}')
if [ -n "$differ" ]; then
	echo "xcaddy build: module versions differ from go.mod's:" >&2
	echo "$differ" >&2
	exit 1
fi
echo "xcaddy build: every module at the version the tests ran with ($(wc -l < "$out/built") modules)"
