#!/usr/bin/env bash
# Three edges, one PostgreSQL: the demo of Caddyfile.example run by three
# Caddy processes (regions iad, lhr, syd; admin endpoints localhost:2019,
# :2020, :2021) that share one database through caddy.storage.postgres.
# They listen on the same ports (Caddy binds with SO_REUSEPORT; each
# edge's fly_edge says share_ports, without which an edge refuses ports
# another process listens on), so the kernel spreads connections among
# them: each answer names the edge that served it. Ctrl-C stops all three.
#
#   scripts/fleet-demo.sh
#   FLYEDGE_STORAGE_DSN=postgres://user:pass@host/db scripts/fleet-demo.sh
#
# Needs PostgreSQL (default: the server at 127.0.0.1:5432, user postgres,
# trust authentication; the database flyedge_demo is created if missing)
# and nothing else on the demo's ports.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${FLEET_DIR:-/tmp/flyedge-fleet}
mkdir -p "$dir"
if [ -z "${FLYEDGE_STORAGE_DSN:-}" ]; then
	command -v psql >/dev/null || { echo "fleet-demo: psql is missing; set FLYEDGE_STORAGE_DSN or install postgresql-client" >&2; exit 2; }
	psql -h 127.0.0.1 -U postgres -Atc "SELECT 1 FROM pg_database WHERE datname = 'flyedge_demo'" | grep -q 1 ||
		psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE flyedge_demo"
	export FLYEDGE_STORAGE_DSN="postgres://postgres@127.0.0.1:5432/flyedge_demo?sslmode=disable"
fi
echo "building caddy into $dir"
go build -o "$dir/caddy" ./cmd/caddy
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
i=0
for region in iad lhr syd; do
	admin=localhost:$((2019 + i))
	sed -e "s/^\tskip_install_trust$/\tskip_install_trust\n\tadmin $admin\n\tstorage postgres {env.FLYEDGE_STORAGE_DSN}/" \
		-e "s/^\t\tregion iad$/\t\tregion $region/" \
		-e "s/^\t\tissuer internal$/\t\tissuer internal\n\t\tshare_ports/" Caddyfile.example > "$dir/Caddyfile.$region"
	mkdir -p "$dir/home.$region"
	HOME="$dir/home.$region" XDG_DATA_HOME="$dir/home.$region/data" XDG_CONFIG_HOME="$dir/home.$region/config" \
		"$dir/caddy" run --config "$dir/Caddyfile.$region" --adapter caddyfile > "$dir/$region.log" 2>&1 &
	pids+=($!)
	echo "edge $region: admin $admin, log $dir/$region.log"
	i=$((i + 1))
done
for admin in localhost:2019 localhost:2020 localhost:2021; do
	for _ in $(seq 1 100); do curl -sf "http://$admin/fly/apps" >/dev/null && break; sleep 0.2; done
done
cat <<EOT

Three edges are up on one database. Try, in another terminal (-k: the CA is in the database,
shared by the three; its root is not in your trust store):

  for i in 1 2 3 4 5 6; do curl -sk https://hello.flyedge.localhost:8443/; done
      # each edge sends you to its nearest machine: "edge region iad|lhr|syd"
  $dir/caddy fly ips allocate-v4 -a echo --address localhost:2020   # on the lhr edge
  $dir/caddy fly ips list -a echo --address localhost:2021           # the syd edge has it already
  exec 3<>/dev/tcp/127.30.0.1/9000; echo hello >&3; head -1 <&3; exec 3>&-   # any edge serves it

Ctrl-C stops the three edges (the database keeps their state).
EOT
wait
