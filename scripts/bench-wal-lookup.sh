#!/usr/bin/env bash
# WAL archive lookups as the archive grows: `wal-push` of a new segment and
# `wal-fetch` of an archived one, with COUNTS segments already archived,
# for two builds of atlas_backup on the same repository (BEFORE: lookups
# read every snapshot manifest; AFTER: one pointer listing and one
# manifest). Segments are synthetic 1 MiB segments of one cluster (valid
# headers, mostly zero bytes), so the numbers are the lookup's cost, not
# the upload's. Prints a Markdown table with the AFTER/BEFORE ratio.
#
# usage: scripts/bench-wal-lookup.sh BEFORE_BINARY AFTER_BINARY [COUNTS...]
#   e.g. scripts/bench-wal-lookup.sh /tmp/atlas_backup.old \
#          target/debug/examples/atlas_backup 10 500
# Both binaries need the `postgres` feature (the wal-* verbs):
#   cargo build -p atlas-examples --features postgres --example atlas_backup
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,15p "$0" >&2; exit 2; }
BEFORE=$(realpath "$1"); AFTER=$(realpath "$2"); shift 2
COUNTS=("$@"); [ ${#COUNTS[@]} -gt 0 ] || COUNTS=(10 500)
REPS=3
WORK=$(mktemp -d /var/tmp/atlas-bench-wal.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
printf 'bench-passphrase' >"$WORK/pw"

# segment NUMBER -> a 1 MiB segment file named as PostgreSQL names it.
segment() {
  python3 - "$WORK/segs" "$1" <<'PY'
import os, struct, sys
d, n = sys.argv[1], int(sys.argv[2])
seg = 1 << 20
os.makedirs(d, exist_ok=True)
name = "00000001%08X%08X" % (n * seg >> 32, (n * seg & 0xFFFFFFFF) // seg)
b = bytearray(seg)
b[0:40] = struct.pack("<HHIQIIQII", 0xD110, 2, 1, n * seg, 0, 0, 42, seg, 8192)
b[40:4096] = os.urandom(4056)
open(os.path.join(d, name), "wb").write(b)
print(name)
PY
}

now() { date +%s.%N; }
ms() { python3 -c "import sys; print(f'{(float(sys.argv[2]) - float(sys.argv[1])) * 1000:.0f}')" "$1" "$2"; }
median() { printf '%s\n' "$@" | sort -n | sed -n "$(( ($# + 1) / 2 ))p"; }

echo "| archived segments | build | wal-push (ms, median of $REPS) | wal-fetch (ms, median of $REPS) |"
echo "|---|---|---|---|"
next=1000
for count in "${COUNTS[@]}"; do
  repo="file://$WORK/repo-$count"
  A=(--repo "$repo" --password-file "$WORK/pw" --quiet)
  "$AFTER" "${A[@]}" init >/dev/null
  middle=""
  for ((i = 1; i <= count; i++)); do
    name=$(segment "$i")
    [ $i = $(( (count + 1) / 2 )) ] && middle=$name
    "$AFTER" "${A[@]}" wal-push "$WORK/segs/$name" >/dev/null
  done
  declare -A push fetch
  for build in BEFORE AFTER; do
    bin=$BEFORE; [ $build = AFTER ] && bin=$AFTER
    p=(); f=()
    for ((r = 0; r < REPS; r++)); do
      next=$((next + 1)); name=$(segment $next)
      t0=$(now); "$bin" "${A[@]}" wal-push "$WORK/segs/$name" >/dev/null; t1=$(now)
      p+=("$(ms "$t0" "$t1")")
      rm -f "$WORK/fetched"
      t0=$(now); "$bin" "${A[@]}" wal-fetch "$middle" "$WORK/fetched" >/dev/null; t1=$(now)
      f+=("$(ms "$t0" "$t1")")
      cmp -s "$WORK/fetched" "$WORK/segs/$middle" || { echo "fetched bytes differ" >&2; exit 1; }
    done
    push[$build]=$(median "${p[@]}"); fetch[$build]=$(median "${f[@]}")
    echo "| $count | $build | ${push[$build]} | ${fetch[$build]} |"
  done
  echo "| $count | AFTER/BEFORE | $(python3 -c "print(f'{${push[AFTER]}/${push[BEFORE]}:.2f}')") | $(python3 -c "print(f'{${fetch[AFTER]}/${fetch[BEFORE]}:.2f}')") |"
done
