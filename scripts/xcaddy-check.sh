#!/usr/bin/env bash
# Runs the README's xcaddy route (section "Build") in a folder of its own,
# as on a fresh machine: installs xcaddy at the pinned version, builds
# Caddy with flyedge and caddy-l4, validates Caddyfile.example with the
# built binary, and checks that `caddy list-modules` shows every flyedge
# module at go.mod's versions.
#
# Users run:   xcaddy build v2.11.9 --with github.com/flyedge/caddy-flyedge=. --with github.com/mholt/caddy-l4@v0.1.2
# This script pins a dummy version (@v0.0.0=.) because module proxies that
# answer 403 for unknown paths make the plain local form fail.
set -euo pipefail
cd "$(dirname "$0")/.."

CADDY_VERSION=v2.11.9
XCADDY_VERSION=v0.4.5
L4=github.com/mholt/caddy-l4@v0.1.2
documented="xcaddy build $CADDY_VERSION --with github.com/flyedge/caddy-flyedge=. --with $L4"
if ! grep -qxF "$documented" README.md; then
	echo "xcaddy build: README.md's Build section does not show the command this script checks: $documented" >&2
	exit 1
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# go install writes to GOBIN when it is set: give it this script's folder,
# so the xcaddy it runs is the one it installed, whatever the environment
echo "xcaddy build: installing xcaddy $XCADDY_VERSION"
GOBIN="$out/bin" go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION"

echo "xcaddy build: building Caddy $CADDY_VERSION with flyedge and caddy-l4 (minutes on a cold cache)"
"$out/bin/xcaddy" build "$CADDY_VERSION" \
	--with github.com/flyedge/caddy-flyedge@v0.0.0=. \
	--with "$L4" \
	--output "$out/caddy"

# the demo config must run on the built binary (its storage kept apart)
mkdir -p "$out/home"
if ! validated=$(HOME="$out/home" XDG_DATA_HOME="$out/home/data" XDG_CONFIG_HOME="$out/home/config" \
	"$out/caddy" validate --config Caddyfile.example 2>&1); then
	echo "xcaddy build: caddy validate --config Caddyfile.example failed:" >&2
	echo "$validated" >&2
	exit 1
fi
echo "xcaddy build: Caddyfile.example is valid for the built Caddy"

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
