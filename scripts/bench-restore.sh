#!/usr/bin/env bash
# Restore speed on one directory tree: one or more atlas_backup binaries
# (say, before and after a change) and restic, each restoring the same
# snapshot into a fresh directory, interleaved round by round (the order
# rotates each round), page cache warm, `sync` before every run. The
# snapshot is taken once, with the first binary, so every binary reads the
# same repository. Every restore of the first round is compared with the
# source (`diff -r --no-dereference`). Prints a Markdown table of medians
# (wall time, user+sys CPU, peak RSS) with ratios to the first binary.
#
# usage: scripts/bench-restore.sh DATA_DIR ROUNDS ATLAS_BINARY... [restic]
#   e.g. RESTORE_DIR=/dev/shm scripts/bench-restore.sh /var/tmp/tree 5 /tmp/atlas-old /tmp/atlas-new restic
# RESTORE_DIR: where the restores go (default: beside the repositories, in
# /var/tmp); a tmpfs there leaves out the disk and the file system's own
# cost of reusing the inodes of the restore deleted just before.
# Needs GNU time (/usr/bin/time); restic only if named.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,16p "$0" >&2; exit 2; }
DATA=$(realpath "$1"); ROUNDS=$2; shift 2
TOOLS=("$@")
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time; Debian package time)" >&2; exit 1; }
WORK=$(mktemp -d /var/tmp/atlas-bench-restore.XXXXXX)
OUT=$(mktemp -d "${RESTORE_DIR:-$WORK}/atlas-bench-restore-out.XXXXXX")
trap 'rm -rf "$WORK" "$OUT"' EXIT
export ATLAS_PASSWORD=bench-passphrase RESTIC_PASSWORD=bench-passphrase
FIRST=${TOOLS[0]}

"$FIRST" --repo "file://$WORK/repo-atlas" --quiet init >/dev/null
"$FIRST" --repo "file://$WORK/repo-atlas" --quiet backup "$DATA" >/dev/null
for tool in "${TOOLS[@]}"; do
  if [ "$tool" = restic ]; then
    restic init --repo "$WORK/repo-restic" >/dev/null
    restic --repo "$WORK/repo-restic" --quiet backup "$DATA" >/dev/null
  fi
done

# run TOOL INDEX ROUND: one timed restore; appends "INDEX wall cpu kib"
run() {
  local tool=$1 i=$2 round=$3 target=$OUT/restore-$2
  rm -rf "$target"; sync
  if [ "$tool" = restic ]; then
    /usr/bin/time -f "%e %U %S %M" -o "$WORK/t" \
      restic --repo "$WORK/repo-restic" --quiet restore latest --target "$target" >"$WORK/log" 2>&1
  else
    /usr/bin/time -f "%e %U %S %M" -o "$WORK/t" \
      "$tool" --repo "file://$WORK/repo-atlas" --quiet restore latest --target "$target" >"$WORK/log" 2>&1
  fi || { echo "$tool failed:" >&2; tail -20 "$WORK/log" >&2; exit 1; }
  awk -v i="$i" '{ printf "%s %s %.2f %s\n", i, $1, $2 + $3, $4 }' "$WORK/t" >>"$WORK/times"
  if [ "$round" = 1 ]; then
    # restic restores the absolute source path below the target; Atlas the
    # backed-up directory's contents into it.
    local got=$target; [ "$tool" = restic ] && got=$target$DATA
    diff -r --no-dereference "$DATA" "$got" >/dev/null || { echo "$tool: restore differs from the source" >&2; exit 1; }
  fi
  rm -rf "$target"
}

n=${#TOOLS[@]}
for round in $(seq 1 "$ROUNDS"); do
  for k in $(seq 0 $((n - 1))); do
    i=$(( (k + round - 1) % n ))
    run "${TOOLS[$i]}" "$i" "$round"
  done
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
col() { awk -v i="$1" -v c="$2" '$1 == i { print $c }' "$WORK/times" | median; }
files=$(find "$DATA" -type f | wc -l); dirs=$(find "$DATA" -type d | wc -l)
mib=$(du -sb "$DATA" | awk '{ printf "%.0f", $1 / 1048576 }')
echo "data: $DATA, $files files, $dirs directories, $mib MiB; $ROUNDS rounds; medians"
echo
echo "| tool | wall s | user+sys s | peak RSS MiB | wall / first | cpu / first |"
echo "|---|---:|---:|---:|---:|---:|"
w0=$(col 0 2); c0=$(col 0 3)
for i in $(seq 0 $((n - 1))); do
  w=$(col "$i" 2); c=$(col "$i" 3); m=$(col "$i" 4)
  awk -v t="${TOOLS[$i]}" -v w="$w" -v c="$c" -v m="$m" -v w0="$w0" -v c0="$c0" \
    'BEGIN { printf "| %s | %.2f | %.2f | %.0f | %.2f× | %.2f× |\n", t, w, c, m / 1024, w / w0, c / c0 }'
done
echo
echo "all runs (tool index, wall s, user+sys s, peak KiB):"
cat "$WORK/times"
