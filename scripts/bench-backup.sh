#!/usr/bin/env bash
# Atlas's backup engine (the atlas_backup reference binary) against restic,
# side by side in one run, on the same generated data set and a local
# repository each: first backup, a second backup after ~1 % of the data
# changed (time and bytes added), restore, and the peak memory (max RSS) of
# every run. Repeats at each size given, to show how time and memory grow.
# Prints Markdown tables.
#
# usage: scripts/bench-backup.sh [SIZE_MIB...]      (default: 512 1024 2048)
# Installs restic (Debian) when missing; needs python3 and GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(512 1024 2048)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/atlas-target}
WORK=$(mktemp -d /var/tmp/atlas-bench-backup.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

if ! command -v restic >/dev/null; then
  echo "installing restic" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 && apt-get install -y -q --no-install-recommends restic >&2
fi
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time; Debian package time)" >&2; exit 1; }

cargo build -q --release -p atlas-examples --example atlas_backup >&2
ATLAS=$CARGO_TARGET_DIR/release/examples/atlas_backup
export ATLAS_PASSWORD=bench-passphrase RESTIC_PASSWORD=bench-passphrase

# timed NAME CMD... : runs CMD, appends "NAME seconds peak_kib" to $WORK/times
timed() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/t" "$@" >"$WORK/$name.log" 2>&1 || {
    echo "$name failed:" >&2; tail -20 "$WORK/$name.log" >&2; exit 1; }
  echo "$name $(cat "$WORK/t")" >>"$WORK/times"
}
get() { awk -v n="$1" -v f="$2" '$1 == n { print $f }' "$WORK/times"; }
bytes() { du -sb "$1" | cut -f1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / 1048576 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

ROWS=()
for size in "${SIZES[@]}"; do
  : >"$WORK/times"
  data=$WORK/data; rm -rf "$data" "$WORK"/repo-* "$WORK"/restore-*
  python3 scripts/gen-dataset.py create "$data" "$size" >&2
  src=$(bytes "$data")

  timed atlas-init "$ATLAS" --repo "file://$WORK/repo-atlas" init
  restic init --repo "$WORK/repo-restic" >/dev/null
  base_a=$(bytes "$WORK/repo-atlas"); base_r=$(bytes "$WORK/repo-restic")

  timed atlas-backup "$ATLAS" --repo "file://$WORK/repo-atlas" --quiet backup "$data"
  timed restic-backup restic --repo "$WORK/repo-restic" --quiet backup "$data"
  first_a=$(bytes "$WORK/repo-atlas"); first_r=$(bytes "$WORK/repo-restic")

  python3 scripts/gen-dataset.py change "$data" 1 >&2
  timed atlas-second "$ATLAS" --repo "file://$WORK/repo-atlas" --quiet backup "$data"
  timed restic-second restic --repo "$WORK/repo-restic" --quiet backup "$data"
  added_a=$(( $(bytes "$WORK/repo-atlas") - first_a )); added_r=$(( $(bytes "$WORK/repo-restic") - first_r ))

  timed atlas-restore "$ATLAS" --repo "file://$WORK/repo-atlas" --quiet restore latest --target "$WORK/restore-atlas"
  timed restic-restore restic --repo "$WORK/repo-restic" --quiet restore latest --target "$WORK/restore-restic"
  # restic restores the absolute source path below the target; Atlas the
  # backed-up directory's contents into it.
  diff -r --no-dereference "$data" "$WORK/restore-atlas" >/dev/null || { echo "atlas restore differs from the source" >&2; exit 1; }
  diff -r --no-dereference "$data" "$WORK/restore-restic$data" >/dev/null || { echo "restic restore differs from the source" >&2; exit 1; }

  for tool in atlas restic; do
    first_bytes=$([ $tool = atlas ] && echo $((first_a - base_a)) || echo $((first_r - base_r)))
    added=$([ $tool = atlas ] && echo $added_a || echo $added_r)
    peak=0
    for step in backup second restore; do
      p=$(get $tool-$step 3); [ "$p" -gt "$peak" ] && peak=$p
    done
    ROWS+=("| $(mib "$src") | $tool | $(get $tool-backup 2) s ($(rate "$src" "$(get $tool-backup 2)") MiB/s) | $(mib "$first_bytes") | $(get $tool-second 2) s | $(mib "$added") | $(get $tool-restore 2) s ($(rate "$src" "$(get $tool-restore 2)") MiB/s) | $(awk -v k="$(get $tool-backup 3)" 'BEGIN{printf "%.0f", k/1024}') / $(awk -v k="$(get $tool-second 3)" 'BEGIN{printf "%.0f", k/1024}') / $(awk -v k="$(get $tool-restore 3)" 'BEGIN{printf "%.0f", k/1024}') |")
  done
  ROWS+=("| | **atlas / restic** | **$(ratio "$(get atlas-backup 2)" "$(get restic-backup 2)")×** time | $(ratio $((first_a - base_a)) $((first_r - base_r)))× | **$(ratio "$(get atlas-second 2)" "$(get restic-second 2)")×** | $(ratio "$added_a" "$added_r")× | **$(ratio "$(get atlas-restore 2)" "$(get restic-restore 2)")×** | $(ratio "$(get atlas-backup 3)" "$(get restic-backup 3)")× / $(ratio "$(get atlas-second 3)" "$(get restic-second 3)")× / $(ratio "$(get atlas-restore 3)" "$(get restic-restore 3)")× |")
  rm -rf "$data" "$WORK"/repo-* "$WORK"/restore-*
done

echo "| data MiB | tool | first backup | stored MiB | second backup (1 % changed) | added MiB | restore | peak RSS MiB (backup / second / restore) |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
echo "$(restic version | cut -d' ' -f1-2); local repositories on $(df -T /var/tmp | awk 'NR==2 {print $2}'); $(nproc) cores; ratios below 1 favour Atlas"
