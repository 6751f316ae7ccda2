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
