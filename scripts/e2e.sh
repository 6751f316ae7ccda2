#!/usr/bin/env bash
# Runs one area of the end-to-end tests, or several: an area is a test
# file of e2e/ without _test.go, named for the data-path step it covers
# (listen, resolve, handle_http, handle_tls, pgtls, udp, state, admin,
# store_pg, examples, ...). Extra arguments go to go test.
#
#   scripts/e2e.sh pgtls -count=1
#   scripts/e2e.sh handle_http handle_tls -race
set -euo pipefail
cd "$(dirname "$0")/../e2e"

areas=()
while [ $# -gt 0 ] && [[ $1 != -* ]]; do areas+=("$1"); shift; done
if [ ${#areas[@]} -eq 0 ]; then
	echo "usage: scripts/e2e.sh <area>... [go test flags]" >&2
	echo "areas: $(ls *_test.go | sed 's/_test.go//' | grep -v -x -e harness -e race -e norace | tr '\n' ' ')" >&2
	exit 2
fi
tests=()
for a in "${areas[@]}"; do
	f="${a}_test.go"
	if [ ! -f "$f" ] || [ "$a" = harness ]; then
		echo "no such area: $a (no test file e2e/$f)" >&2
		exit 2
	fi
	tests+=($(sed -n 's/^func \(Test[A-Za-z0-9_]*\)(t \*testing.T).*/\1/p' "$f"))
done
if [ ${#tests[@]} -eq 0 ]; then
	echo "no tests in: ${areas[*]}" >&2
	exit 2
fi
pattern="^($(IFS='|'; echo "${tests[*]}"))\$"
exec go test -run "$pattern" "$@" .
