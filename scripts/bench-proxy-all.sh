#!/usr/bin/env bash
# Every shape of the proxy benchmark, one after the other, with
# scripts/bench-proxy.sh (Atlas in its embedded mode and nginx on the same
# upstream, load generator and machine), then one summary table of the
# ratios against nginx. Run it on an otherwise idle machine: anything
# else running (a build, even at nice 19) shows in the p99 column.
#
# usage: scripts/bench-proxy-all.sh [DURATION_S] [CONNECTIONS] [ROUNDS]
# ATLAS_BENCH_BIN and ATLAS_BENCH_TEXT are handed on (see bench-proxy.sh).
# The full tables of each shape, and every round, go to standard error.
set -uo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${2:-50}
ROUNDS=${3:-3}
# name | environment | path | body bytes
SHAPES=(
  "GET / (21 B)||/|0"
  "POST 4 KiB, upstream does not read||/|4096"
  "POST 4 KiB, upstream reads||/drain|4096"
  "POST 1 MiB, upstream does not read||/|1048576"
  "POST 1 MiB, upstream reads||/drain|1048576"
  "GET 64 KiB answers||/bytes/65536|0"
  "GET 100 KiB text, gzip level 1|ATLAS_BENCH_GZIP=1|/text/102400|0"
  "TLS, keep-alive|ATLAS_BENCH_TLS=1|/|0"
  "TLS, new connection per request|ATLAS_BENCH_TLS=new|/|0"
  "HTTP/2 over TLS, GET /|ATLAS_BENCH_TLS=h2|/|0"
)
SUMMARY=()
status=0
for shape in "${SHAPES[@]}"; do
  IFS='|' read -r name envs path body <<<"$shape"
  echo "=== $name: ${envs:+$envs }scripts/bench-proxy.sh $DUR $CONNS $ROUNDS $path $body" >&2
  out=$(env ${envs:+"$envs"} scripts/bench-proxy.sh "$DUR" "$CONNS" "$ROUNDS" "$path" "$body" 2>&1)
  rc=$?
  echo "$out" >&2
  [ $rc -ne 0 ] && status=1
  # The Atlas row: | Atlas ... | rps | p50 | p99 | cpu | sock | non2xx | thr | p99r | cpur |
  row=$(echo "$out" | grep '^| Atlas ProxyRouter')
  nrow=$(echo "$out" | grep '^| nginx ')
  IFS='|' read -r _ _ rps _ _ _ sock _ thr p99r cpur _ <<<"$row"
  IFS='|' read -r _ _ nrps _ <<<"$nrow"
  met() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { if ((op == ">=" && v >= t) || (op == "<=" && v <= t) || (op == "<" && v < t)) print "met"; else print "not met" }'; }
  SUMMARY+=("| $name |${rps}|${nrps}| ${thr// /} $(met "$thr" 1.2 ">=") | ${p99r// /} $(met "$p99r" 0.8 "<=") | ${cpur// /} $(met "$cpur" 1 "<") |${sock}|")
done
echo "| shape | Atlas req/s | nginx req/s | throughput vs nginx (≥ 1.2) | p99 vs nginx (≤ 0.8) | CPU/request vs nginx (< 1) | Atlas socket errors |"
echo "|---|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${SUMMARY[@]}"
exit $status
