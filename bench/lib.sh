# Shell helpers the bench scripts source.

# median of the numbers in $1 (separated by spaces or newlines)
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }

# render_configs DIR OFFSET: the three proxies allocs.sh and instr.sh compare,
# as DIR/caddy.Caddyfile, DIR/flyedge.Caddyfile and DIR/caddy-fly.Caddyfile, on
# the shared harness's ports plus OFFSET (caddy 8083/8443, flyedge 8084/8444,
# caddy-fly 8085/8445; admin 2981, 2982, 2983; backend 9001), with __RUN__ -> DIR.
#   caddy:     the harness's Caddyfile (reverse_proxy with header_up lines)
#   flyedge:   bench/http.Caddyfile (fly_headers, dynamic fly, lb_policy fly, transport fly)
#   caddy-fly: plain Caddy sending the whole set of headers the flyedge chain
#              sends: X-Forwarded-Ssl, X-Forwarded-Port and Fly-Request-Id to
#              the app, Fly-Request-Id to the client, as header_up/header_down
#              lines with placeholders ({http.request.scheme},
#              {http.request.local.port}, {http.request.uuid})
# Needs HARNESS (the shared harness's folder) and BENCH (this folder).
render_configs() {
	local dir=$1 off=$2
	local ca=$((2981 + off)) fa=$((2982 + off)) ka=$((2983 + off)) be=$((9001 + off))
	sed -e "s/admin off/admin 127.0.0.1:$ca/" -e "s#__RUN__#$dir#" \
		-e "s/:8083/:$((8083 + off))/; s/:8443/:$((8443 + off))/; s/127.0.0.1:9001/127.0.0.1:$be/" \
		"$HARNESS/Caddyfile" >"$dir/caddy.Caddyfile"
	sed -e "s/admin off/admin 127.0.0.1:$fa/" -e "s#__RUN__#$dir#" \
		-e "s/8084/$((8084 + off))/g; s/8444/$((8444 + off))/g; s/service 9001/service $be/" \
		"$BENCH/http.Caddyfile" >"$dir/flyedge.Caddyfile"
	sed -e "s/127.0.0.1:$ca/127.0.0.1:$ka/; s/:$((8083 + off))/:$((8085 + off))/; s/:$((8443 + off))/:$((8445 + off))/" \
		-e 's/^\( *\)header_up Fly-Region iad$/&\n\1header_up X-Forwarded-Ssl {http.request.scheme}\n\1header_up X-Forwarded-Port {http.request.local.port}\n\1header_up Fly-Request-Id {http.request.uuid}\n\1header_down Fly-Request-Id {http.request.uuid}/' \
		"$dir/caddy.Caddyfile" >"$dir/caddy-fly.Caddyfile"
	grep -q 'header_down Fly-Request-Id' "$dir/caddy-fly.Caddyfile" || {
		echo "bench: no header_up Fly-Region line in $HARNESS/Caddyfile" >&2
		return 2
	}
}

# prepare_three PROG DIR OFFSET: what allocs.sh and instr.sh do before they
# measure. It checks NAMES, that HARNESS has its Caddyfile and that the ports
# of render_configs at OFFSET are free; builds this repo's Caddy and the
# harness's backend into DIR; renders and adapts the three configs; and
# fills URL[name:test] (test h1 or tls) and hdrs (the lines of HEADERS as
# -H arguments, for wrk or h2load).
prepare_three() {
	local prog=$1 dir=$2 off=$3 n p i
	for n in $NAMES; do
		[[ $n =~ ^(caddy|caddy-fly|flyedge)$ ]] || { echo "$prog: NAMES: $n is none of caddy, caddy-fly, flyedge" >&2; exit 2; }
	done
	[[ -f $HARNESS/Caddyfile ]] || { echo "$prog: no $HARNESS/Caddyfile (set HARNESS)" >&2; exit 2; }
	for p in 8083 8084 8085 8443 8444 8445 2981 2982 2983 9001; do
		[[ -z $(ss -Hltn "sport = :$((p + off))") ]] || { echo "$prog: port $((p + off)) is in use" >&2; exit 2; }
	done
	(cd "$REPO" && go build -o "$dir/caddy" ./cmd/caddy)
	(cd "$HARNESS/backend" && go build -o "$dir/backend" .)
	render_configs "$dir" "$off"
	for n in caddy caddy-fly flyedge; do
		"$dir/caddy" adapt --config "$dir/$n.Caddyfile" --adapter caddyfile >/dev/null 2>"$dir/adapt.log" || { cat "$dir/adapt.log" >&2; exit 2; }
	done
	declare -gA URL=()
	i=3
	for n in caddy flyedge caddy-fly; do # render_configs' order of ports
		URL[$n:h1]=http://127.0.0.1:$((8080 + i + off))/
		URL[$n:tls]=https://127.0.0.1:$((8440 + i + off))/
		i=$((i + 1))
	done
	hdrs=()
	while IFS= read -r p; do
		if [[ -n $p ]]; then hdrs+=(-H "$p"); fi
	done <<<"${HEADERS:-}"
}

# served_by PROG URL PID [LOG]: exits 1, showing the end of LOG, unless the
# port of URL is served by PID alone (Caddy binds with SO_REUSEPORT, so a
# stray one would share it).
served_by() {
	local port=${2##*:} owner
	port=${port%/}
	owner=$(ss -Hltnp "sport = :$port" | { grep -o 'pid=[0-9]*' || true; } | sort -u | tr '\n' ' ')
	[[ $owner == "pid=$3 " ]] || {
		echo "$1: $2 is served by ${owner:-nobody}, not pid $3" >&2
		[[ -z ${4:-} ]] || tail -5 "$4" >&2
		exit 1
	}
}
