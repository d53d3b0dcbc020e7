#!/usr/bin/env bash
# Atlas's backup engine (the atlas_backup reference binary) against restic,
# side by side in one run, on the same data and a local repository each:
# first backup, a second backup after part of the data changed (time and
# bytes added), restore, and the wall time, CPU time (user + sys) and peak
# memory (max RSS) of every run. Prints Markdown tables.
#
# usage: scripts/bench-backup.sh [DATASET...]   (default: 512 1024 2048 tree)
#   DATASET is either
#   - a size in MiB: the generated mixed data set (scripts/gen-dataset.py:
#     80 % small, 18 % medium, 2 % large files); the second backup runs
#     after `gen-dataset.py change` (about 1 % of the bytes: edits inside
#     files plus new files);
#   - `tree`: a source tree of many small files: a copy of this machine's
#     unpacked cargo registry sources (~/.cargo/registry/src, when present)
#     plus TREE_FILES (default 40000) generated text files of log-normal
#     sizes (mean about 16 KiB) in directories up to 12 levels deep; the
#     second backup runs after 1 % of the files were edited and one new
#     50 MiB file was added.
# ROUNDS (default 1): each data set is measured ROUNDS times from fresh
# repositories, the order of the two tools alternating round by round;
# the tables show medians.
# ATLAS: an atlas_backup binary to measure instead of building one.
# RESTORE_DIR (default /dev/shm when it is a tmpfs, else beside the
# repositories): where restores go. On ext4, restoring right after the
# previous tool's restore was deleted spent many seconds of system time
# finding free inodes, which buried the tools' own difference.
# Both tools keep their local caches (index files, manifests) under the
# run's own folder (XDG_CACHE_HOME), removed at the end.
# Installs restic (Debian) when missing; needs python3 and GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
SETS=("$@")
[ ${#SETS[@]} -gt 0 ] || SETS=(512 1024 2048 tree)
ROUNDS=${ROUNDS:-1}
TREE_FILES=${TREE_FILES:-40000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/atlas-target}
WORK=$(mktemp -d /var/tmp/atlas-bench-backup.XXXXXX)
if [ -z "${RESTORE_DIR:-}" ]; then
  RESTORE_DIR=$WORK
  [ "$(stat -f -c %T /dev/shm 2>/dev/null)" = tmpfs ] && RESTORE_DIR=/dev/shm
fi
OUT=$(mktemp -d "$RESTORE_DIR/atlas-bench-backup-out.XXXXXX")
trap 'rm -rf "$WORK" "$OUT"' EXIT
export XDG_CACHE_HOME=$WORK/cache

if ! command -v restic >/dev/null; then
  echo "installing restic" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 && apt-get install -y -q --no-install-recommends restic >&2
fi
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time; Debian package time)" >&2; exit 1; }

if [ -z "${ATLAS:-}" ]; then
  cargo build -q --release -p atlas-examples --example atlas_backup >&2
  ATLAS=$CARGO_TARGET_DIR/release/examples/atlas_backup
fi
export ATLAS_PASSWORD=bench-passphrase RESTIC_PASSWORD=bench-passphrase

# The small-file tree: text that reads like source code, sliced from one
# generated corpus at random offsets (so files differ), log-normal sizes.
gen_tree() {
  python3 - "$1" "$TREE_FILES" <<'EOF'
import os, random, sys
root, nfiles = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 10))) for _ in range(5000)]
corpus = b"".join(b"    " * rng.randint(0, 4) + b" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) + b"\n"
                  for _ in range(200000))
dirs = [root]
os.makedirs(root, exist_ok=True)
for i in range(nfiles):
    if i % 12 == 0:
        parent = rng.choice(dirs)
        if parent.count(os.sep) - root.count(os.sep) < 12:
            d = os.path.join(parent, f"m{i:06}")
            os.makedirs(d, exist_ok=True)
            dirs.append(d)
    d = rng.choice(dirs[-40:])
    size = min(int(rng.lognormvariate(9.0, 1.2)), 4 << 20)
    at = rng.randrange(0, len(corpus) - size - 1)
    with open(os.path.join(d, f"f{i:06}.rs"), "wb") as f:
        f.write(corpus[at:at + size])
EOF
}

# 1 % of the tree's files edited (a line rewritten in place, one appended)
# and one new 50 MiB file of random bytes.
change_tree() {
  python3 - "$1" <<'EOF'
import os, random, sys
root = sys.argv[1]
rng = random.Random(2)
files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs
               if not os.path.islink(os.path.join(dp, f)))
for f in rng.sample(files, len(files) // 100):
    size = os.path.getsize(f)
    with open(f, "r+b") as fh:
        if size > 64:
            fh.seek(rng.randrange(0, size - 64))
            fh.write(b"// changed %08d\n" % rng.randrange(10**8))
        fh.seek(0, 2)
        fh.write(b"// appended line\n")
with open(os.path.join(root, "new-50MiB.bin"), "wb") as fh:
    fh.write(rng.randbytes(50 * 1024 * 1024))
print(f"edited {len(files) // 100} of {len(files)} files, added one of 50 MiB")
EOF
}

# timed NAME CMD... : runs CMD, appends "NAME seconds peak_kib cpu_seconds"
timed() {
  local name=$1; shift
  sync
  /usr/bin/time -f "%e %M %U %S" -o "$WORK/t" "$@" >"$WORK/$name.log" 2>&1 || {
    echo "$name failed:" >&2; tail -20 "$WORK/$name.log" >&2; exit 1; }
  awk -v n="$name" '{ printf "%s %s %s %.2f\n", n, $1, $2, $3 + $4 }' "$WORK/t" >>"$WORK/times"
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
get() { awk -v n="$1" -v f="$2" '$1 == n { print $f }' "$WORK/times" | median; }
bytes() { du -sb "$1" | cut -f1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / 1048576 / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
kib2mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
usfile() { awk -v s="$1" -v n="$2" 'BEGIN { printf "%.0f", s * 1e6 / n }'; }

# backup_phase TOOL PHASE: one timed backup of the data by TOOL.
backup_phase() {
  local tool=$1 phase=$2
  if [ "$tool" = atlas ]; then
    timed "atlas-$phase" "$ATLAS" --repo "file://$WORK/repo-atlas" --quiet backup "$data"
  else
    timed "restic-$phase" restic --repo "$WORK/repo-restic" --quiet backup "$data"
  fi
}

ROWS=()
for set in "${SETS[@]}"; do
  : >"$WORK/times"; : >"$WORK/sizes"
  for round in $(seq 1 "$ROUNDS"); do
    data=$WORK/data; rm -rf "$data" "$WORK"/repo-* "$OUT"/restore-*
    if [ "$set" = tree ]; then
      mkdir -p "$data"
      [ -d "$HOME/.cargo/registry/src" ] && cp -r "$HOME/.cargo/registry/src" "$data/registry"
      gen_tree "$data/gen"
    else
      python3 scripts/gen-dataset.py create "$data" "$set" >&2
    fi
    # Page cache warm for both.
    find "$data" -type f -print0 | xargs -0 cat >/dev/null
    src=$(bytes "$data"); files=$(find "$data" -type f | wc -l)
    "$ATLAS" --repo "file://$WORK/repo-atlas" --quiet init >/dev/null
    restic init --repo "$WORK/repo-restic" >/dev/null
    base_a=$(bytes "$WORK/repo-atlas"); base_r=$(bytes "$WORK/repo-restic")
    order=(atlas restic); [ $((round % 2)) = 0 ] && order=(restic atlas)

    for t in "${order[@]}"; do backup_phase "$t" backup; done
    first_a=$(bytes "$WORK/repo-atlas"); first_r=$(bytes "$WORK/repo-restic")
    if [ "$set" = tree ]; then change_tree "$data" >&2; else python3 scripts/gen-dataset.py change "$data" 1 >&2; fi
    find "$data" -type f -print0 | xargs -0 cat >/dev/null
    src2=$(bytes "$data")
    for t in "${order[@]}"; do backup_phase "$t" second; done
    second_a=$(bytes "$WORK/repo-atlas"); second_r=$(bytes "$WORK/repo-restic")
    for t in "${order[@]}"; do
      if [ "$t" = atlas ]; then
        timed atlas-restore "$ATLAS" --repo "file://$WORK/repo-atlas" --quiet restore latest --target "$OUT/restore-atlas"
      else
        timed restic-restore restic --repo "$WORK/repo-restic" --quiet restore latest --target "$OUT/restore-restic"
      fi
    done
    # restic restores the absolute source path below the target; Atlas the
    # backed-up directory's contents into it.
    diff -r --no-dereference "$data" "$OUT/restore-atlas" >/dev/null || { echo "atlas restore differs from the source" >&2; exit 1; }
    diff -r --no-dereference "$data" "$OUT/restore-restic$data" >/dev/null || { echo "restic restore differs from the source" >&2; exit 1; }
    echo "atlas $((first_a - base_a)) $((second_a - first_a))" >>"$WORK/sizes"
    echo "restic $((first_r - base_r)) $((second_r - first_r))" >>"$WORK/sizes"
    rm -rf "$data" "$WORK"/repo-* "$OUT"/restore-*
  done
  size_of() { awk -v n="$1" -v f="$2" '$1 == n { print $f }' "$WORK/sizes" | median; }
  label=$([ "$set" = tree ] && echo "tree, $files files" || echo "$set MiB")
  for tool in atlas restic; do
    ROWS+=("| $label, $(mib "$src") MiB | $tool | $(get $tool-backup 2) s ($(rate "$src" "$(get $tool-backup 2)") MiB/s) | $(get $tool-backup 4) s ($(usfile "$(get $tool-backup 4)" "$files") µs/file) | $(mib "$(size_of $tool 2)") | $(get $tool-second 2) s | $(mib "$(size_of $tool 3)") | $(get $tool-restore 2) s ($(rate "$src2" "$(get $tool-restore 2)") MiB/s) | $(kib2mib "$(get $tool-backup 3)") / $(kib2mib "$(get $tool-second 3)") / $(kib2mib "$(get $tool-restore 3)") |")
  done
  ROWS+=("| | **atlas / restic** | **$(ratio "$(get atlas-backup 2)" "$(get restic-backup 2)")×** time | $(ratio "$(get atlas-backup 4)" "$(get restic-backup 4)")× | $(ratio "$(size_of atlas 2)" "$(size_of restic 2)")× | **$(ratio "$(get atlas-second 2)" "$(get restic-second 2)")×** | $(ratio "$(size_of atlas 3)" "$(size_of restic 3)")× | **$(ratio "$(get atlas-restore 2)" "$(get restic-restore 2)")×** | $(ratio "$(get atlas-backup 3)" "$(get restic-backup 3)")× / $(ratio "$(get atlas-second 3)" "$(get restic-second 3)")× / $(ratio "$(get atlas-restore 3)" "$(get restic-restore 3)")× |")
  sed "s/^/$set /" "$WORK/times" >>"$WORK/all-times"
done

echo "| data | tool | first backup | its CPU (user+sys) | stored MiB | second backup | added MiB | restore | peak RSS MiB (backup / second / restore) |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${ROWS[@]}"
echo
echo "$(restic version | cut -d' ' -f1-2); local repositories on $(df -T /var/tmp | awk 'NR==2 {print $2}'), restores on $(df -T "$OUT" | awk 'NR==2 {print $2}'); $(nproc) cores; $ROUNDS round(s), medians; ratios below 1 favour Atlas"
