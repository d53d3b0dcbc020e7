#!/usr/bin/env bash
# Atlas's proxy router against nginx as a reverse proxy, and against no proxy
# at all, on the same upstream with the same load generator (wrk), the same
# connections and duration, all on 127.0.0.1. Prints a Markdown table with
# requests/s, p50 and p99 latency, socket errors and the ratios against
# nginx.
#
# usage: scripts/bench-proxy.sh [DURATION_S] [CONNECTIONS] [ROUNDS] [PATH] [BODY_BYTES]
# PATH defaults to `/` (a 21-byte answer); `/bytes/N` answers N bytes. With
# BODY_BYTES > 0 every request is a POST with a body of that size: the demo
# app answers `/` without reading the body (as frameworks do for auth and
# size errors) and `/drain` after reading all of it.
# ATLAS_PROXY_MODE=shared runs atlas_proxy with --shared-runtime (one
# multi-threaded runtime) instead of its default, the embedded router with
# its data path on worker threads.
# ATLAS_BENCH_GZIP=1 has both proxies gzip text responses (level 1, as
# nginx's default gzip_comp_level) and wrk ask for gzip; use it with
# PATH=/text/N: N bytes of text/plain, generated English-like prose
# (about 2.9:1 at level 1), or the first N bytes of the file
# ATLAS_BENCH_TEXT names (any real page, script or source file).
# PATH=/bytes/N answers N repeats of one byte, which every compressor
# turns into a few hundred bytes at once: not a compression benchmark.
# ATLAS_BENCH_TLS=1 has both proxies terminate TLS (the same P-256
# certificate, made here; TLS 1.2 and 1.3, ECDHE with AES-GCM or
# ChaCha20-Poly1305) with wrk connecting over https (the upstream stays
# plain); ATLAS_BENCH_TLS=new also closes the connection after every request,
# so each request is a new TLS handshake (new connections per second);
# ATLAS_BENCH_TLS=h2 has clients speak HTTP/2 to both proxies (ALPN h2;
# nginx `listen ... ssl http2`) with h2load as the load generator
# (CONNECTIONS connections, STREAMS (default 10) concurrent streams each;
# p50/p99 from its per-request log); the bare upstream, which speaks
# HTTP/1.1 only, is loaded by h2load --h1 for reference.
# Exits with status 1 when the Atlas proxy had any socket error (connect,
# read, write, timeout), which a client sees as a lost request.
# Installs nginx, wrk and h2load (Debian) when missing. Needs root for apt only.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${2:-64}
ROUNDS=${3:-3}
URLPATH=${4:-/}
BODY=${5:-0}
MODE=${ATLAS_PROXY_MODE:-default}
THREADS=2
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/atlas-target}
WORK=$(mktemp -d /tmp/atlas-bench-proxy.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
[ "${ATLAS_BENCH_TLS:-0}" = h2 ] && { command -v h2load >/dev/null || need+=(nghttp2-client); }
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi

# ATLAS_BENCH_BIN: a directory with release builds of atlas_proxy and
# demo_app to use instead of building them here.
if [ -n "${ATLAS_BENCH_BIN:-}" ]; then
  BIN=$ATLAS_BENCH_BIN
else
  cargo build -q --release -p atlas-examples --example atlas_proxy --example demo_app >&2
  BIN=$CARGO_TARGET_DIR/release/examples
fi

UP=127.0.0.1:18090; ATLAS=127.0.0.1:18091; NGINX=127.0.0.1:18092
TLS=${ATLAS_BENCH_TLS:-0}
PROXY_SCHEME=http
[ "$TLS" != 0 ] && PROXY_SCHEME=https
wait_port() { for _ in $(seq 100); do curl -skf -o /dev/null "${2:-http}://$1/" && return 0; sleep 0.05; done; echo "nothing answers on $1" >&2; return 1; }

UP_ARGS=()
[ -n "${ATLAS_BENCH_TEXT:-}" ] && UP_ARGS+=(--text-file "$ATLAS_BENCH_TEXT")
"$BIN/demo_app" --port "${UP##*:}" --version bench "${UP_ARGS[@]}" >"$WORK/upstream.log" 2>&1 & PIDS+=($!)
wait_port $UP
GZIP=${ATLAS_BENCH_GZIP:-0}
ATLAS_ARGS=()
[ "$MODE" = shared ] && ATLAS_ARGS+=(--shared-runtime)
[ "$GZIP" = 1 ] && ATLAS_ARGS+=(--gzip)
NGINX_GZIP=""
NGINX_TLS=""
NGINX_LISTEN=$NGINX
if [ "$TLS" != 0 ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
  ATLAS_ARGS+=(--tls-cert "$WORK/tls.crt" --tls-key "$WORK/tls.key")
  NGINX_LISTEN="$NGINX ssl"
  [ "$TLS" = h2 ] && NGINX_LISTEN="$NGINX ssl http2"
  NGINX_TLS="ssl_certificate $WORK/tls.crt; ssl_certificate_key $WORK/tls.key; ssl_protocols TLSv1.2 TLSv1.3; ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20; ssl_prefer_server_ciphers on; ssl_session_cache off; ssl_session_tickets off;"
fi
[ "$GZIP" = 1 ] && NGINX_GZIP="gzip on; gzip_comp_level 1; gzip_min_length 1024; gzip_proxied any; gzip_vary on; gzip_types text/plain;"
"$BIN/atlas_proxy" --listen $ATLAS --blue $UP --threads 2 "${ATLAS_ARGS[@]}" >"$WORK/atlas.log" 2>&1 & PIDS+=($!); APID=$!
wait_port $ATLAS $PROXY_SCHEME

mkdir -p "$WORK/nginx/logs"
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 2;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  # nginx ends a client connection after 1,000 requests by default (an
  # HTTP/2 one with GOAWAY, which h2load counts as failed requests);
  # Atlas does not, so neither does nginx here.
  keepalive_requests 1000000;
  $NGINX_GZIP
  upstream app { server $UP; keepalive 128; }
  server {
    listen $NGINX_LISTEN;
    $NGINX_TLS
    client_max_body_size 64m;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -g 'daemon off;' & PIDS+=($!); NPID=$!
wait_port $NGINX $PROXY_SCHEME

# POST shapes: a wrk script that sends the body with every request.
WRK_ARGS=()
[ "$GZIP" = 1 ] && WRK_ARGS+=(-H "Accept-Encoding: gzip")
[ "$TLS" = new ] && WRK_ARGS+=(-H "Connection: close")
if [ "$BODY" -gt 0 ]; then
  cat >"$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = string.rep("x", $BODY)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
  WRK_ARGS+=(-s "$WORK/post.lua")
fi

# wrk prints latency in us/ms/s; normalise to milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'; }
# CPU time (user + system, clock ticks) of a process and its children
# (nginx's workers), from /proc.
ticks() {
  local t=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)
STREAMS=${STREAMS:-10}
# One h2load pass: "rps p50 p99 socket_errors non2xx requests", latencies
# from its per-request log (start us, status, duration us).
h2pass() { # name addr
  local out proto=(-m"$STREAMS") n
  # HTTP/1.1 to the upstream: no pipelining, one request at a time per connection.
  [ "$1" = direct ] && proto=(--h1 -m1)
  rm -f "$WORK/h2.log"  # h2load appends to its log
  out=$(h2load "${proto[@]}" -t$THREADS -c"$CONNS" -D "$DUR" --log-file "$WORK/h2.log" "$(scheme "$1")://$2$URLPATH" 2>&1)
  echo "$out" >> "$WORK/$1.h2load"
  n=$(awk 'END { print NR }' "$WORK/h2.log")
  pct() { cut -f3 "$WORK/h2.log" | sort -n | awk -v q="$1" -v n="$n" 'NR == int(n * q + 0.999) { printf "%.3f", $1 / 1000; exit }'; }
  echo "$(echo "$out" | awk '/^finished in/ { gsub(",", ""); print $4 }') $(pct 0.5) $(pct 0.99)" \
    "$(echo "$out" | awk '/^requests:/ { gsub(",", ""); print $10 + $12 + $14 }')" \
    "$(echo "$out" | awk '/^status codes:/ { gsub(",", ""); print $5 + $7 + $9 }')" "$n"
}
measure() { # name addr [pid] -> "rps p50 p99 cpu_us_per_request" of one wrk pass
  local out t0=0 t1=0
  [ -n "${3:-}" ] && t0=$(ticks "$3")
  if [ "$TLS" = h2 ]; then
    local rps p50 p99 sock non2xx n
    read -r rps p50 p99 sock non2xx n < <(h2pass "$1" "$2")
    [ -n "${3:-}" ] && t1=$(ticks "$3")
    [ "$sock$non2xx" != 00 ] && echo "$1: $sock failed/errored/timed out, $non2xx non-2xx" >&2
    echo "$rps $p50 $p99 $(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$n" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }') $sock $non2xx"
    return
  fi
  out=$(wrk -t$THREADS -c"$CONNS" -d"${DUR}s" --latency "${WRK_ARGS[@]}" "$(scheme "$1")://$2$URLPATH")
  [ -n "${3:-}" ] && t1=$(ticks "$3")
  echo "$out" >> "$WORK/$1.wrk"
  local rps p50 p99 errs sock non2xx
  rps=$(echo "$out" | awk '/^Requests\/sec/ {print $2}')
  p50=$(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')")
  p99=$(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")
  errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  [ -n "$errs" ] && echo "$1: $errs" >&2
  # "Socket errors: connect 0, read 5, write 0, timeout 0" -> 5
  sock=$(echo "$out" | awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 }')
  non2xx=$(echo "$out" | awk '/Non-2xx/ { print $NF }')
  local n cpu
  n=$(echo "$out" | awk '/requests in/ { print $1 }')
  cpu=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="$n" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
  echo "$rps $p50 $p99 $cpu ${sock:-0} ${non2xx:-0}"
}
# The upstream is always plain; the proxies speak TLS with ATLAS_BENCH_TLS.
scheme() { if [ "$1" = direct ]; then echo http; else echo "$PROXY_SCHEME"; fi; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
# One warm-up pass each, then ROUNDS rounds that alternate the targets, so a
# slow spell of the machine hits all three alike; each column is the median.
declare -A RPS P50 P99 CPU SOCK=([direct]=0 [atlas]=0 [nginx]=0) BAD=([direct]=0 [atlas]=0 [nginx]=0)
declare -A PID=([direct]="" [atlas]=$APID [nginx]=$NPID)
for t in direct:$UP atlas:$ATLAS nginx:$NGINX; do
  [ "$TLS" = h2 ] && { h2pass "${t%%:*}" "${t#*:}" >/dev/null; continue; }
  wrk -t$THREADS -c"$CONNS" -d"${DUR}s" "${WRK_ARGS[@]}" "$(scheme "${t%%:*}")://${t#*:}$URLPATH" >/dev/null 2>&1
done
for r in $(seq "$ROUNDS"); do
  for t in direct:$UP atlas:$ATLAS nginx:$NGINX; do
    read -r rps p50 p99 cpu sock bad < <(measure "${t%%:*}" "${t#*:}" "${PID[${t%%:*}]}")
    RPS[${t%%:*}]+="$rps "; P50[${t%%:*}]+="$p50 "; P99[${t%%:*}]+="$p99 "; CPU[${t%%:*}]+="$cpu "
    SOCK[${t%%:*}]=$((SOCK[${t%%:*}] + sock))
    BAD[${t%%:*}]=$((BAD[${t%%:*}] + bad))
    echo "round $r ${t%%:*}: $rps req/s, p50 $p50 ms, p99 $p99 ms, proxy CPU $cpu us/request, $sock socket errors" >&2
  done
done
med() { echo "$1" | tr ' ' '\n' | grep -v '^$' | median; }
read -r d_rps d_p50 d_p99 <<<"$(med "${RPS[direct]}") $(med "${P50[direct]}") $(med "${P99[direct]}")"
read -r a_rps a_p50 a_p99 a_cpu <<<"$(med "${RPS[atlas]}") $(med "${P50[atlas]}") $(med "${P99[atlas]}") $(med "${CPU[atlas]}")"
read -r n_rps n_p50 n_p99 n_cpu <<<"$(med "${RPS[nginx]}") $(med "${P50[nginx]}") $(med "${P99[nginx]}") $(med "${CPU[nginx]}")"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a/b }'; }
echo "| target | requests/s | p50 ms | p99 ms | proxy CPU µs/request | socket errors | non-2xx | throughput vs nginx | p99 vs nginx | CPU/request vs nginx |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
echo "| no proxy (upstream direct) | $d_rps | $d_p50 | $d_p99 | – | ${SOCK[direct]} | ${BAD[direct]} | $(ratio "$d_rps" "$n_rps") | $(ratio "$d_p99" "$n_p99") | – |"
echo "| nginx $(nginx -v 2>&1 | sed 's|.*/||') reverse proxy | $n_rps | $n_p50 | $n_p99 | $n_cpu | ${SOCK[nginx]} | ${BAD[nginx]} | 1.00 | 1.00 | 1.00 |"
echo "| Atlas ProxyRouter ($MODE) | $a_rps | $a_p50 | $a_p99 | $a_cpu | ${SOCK[atlas]} | ${BAD[atlas]} | $(ratio "$a_rps" "$n_rps") | $(ratio "$a_p99" "$n_p99") | $(ratio "$a_cpu" "$n_cpu") |"
echo
shape="GET $URLPATH"
if [ "$GZIP" = 1 ]; then
  # What each proxy's level 1 makes of the answer: bytes on the wire.
  wire() { curl -sk -H 'Accept-Encoding: gzip' "$PROXY_SCHEME://$1$URLPATH" | wc -c; }
  shape="GET $URLPATH gzip-compressed by the proxies ($(curl -s "http://$UP$URLPATH" | wc -c) bytes to Atlas $(wire $ATLAS), to nginx $(wire $NGINX) compressed)"
fi
[ "$BODY" -gt 0 ] && shape="POST $URLPATH with $BODY-byte bodies"
[ "$TLS" = 1 ] && shape="$shape over TLS to the proxies (keep-alive)"
[ "$TLS" = new ] && shape="$shape over TLS to the proxies, a new connection and handshake per request"
[ "$TLS" = h2 ] && shape="$shape over HTTP/2 and TLS to the proxies ($STREAMS concurrent streams per connection; the bare upstream over HTTP/1.1)"
LOADGEN="wrk -t$THREADS -c$CONNS -d${DUR}s --latency"
[ "$TLS" = h2 ] && LOADGEN="h2load -t$THREADS -c$CONNS -m$STREAMS -D $DUR"
echo "$LOADGEN, $shape; medians of $ROUNDS alternating rounds after a warm-up pass each; socket errors summed over the measured rounds; $(nproc) cores; upstream: demo_app (release)"
if [ "${SOCK[atlas]}" -ne 0 ]; then
  echo "FAIL: the Atlas proxy had ${SOCK[atlas]} socket errors" >&2
  exit 1
fi
