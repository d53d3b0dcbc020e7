#!/usr/bin/env bash
# PostgreSQL point-in-time recovery through the backup repository, beside
# plain pg_basebackup, on one throwaway cluster (initdb into a temporary
# directory, archive_command = atlas_backup wal-push):
#   1. pgbench -i at SCALE (70 makes about 1 GiB), archived as it goes;
#   2. base backup: `pg_basebackup -Ft -X fetch` into a local directory
#      (the baseline), then `atlas_backup pg-backup` into the repository
#      (streamed, nothing staged locally); the ratio of the two;
#   3. WAL push latency: `wal-push` of SEGMENTS segments (copies of
#      archived ones) into a fresh repository, and again (already archived);
#   4. restore to a time: a pgbench run, a marker moment, more pgbench,
#      then `pg-restore --target-time MARKER`, with the time of each phase.
# Prints a Markdown table.
#
# usage: scripts/bench-pitr.sh ATLAS_BINARY [SCALE] [SEGMENTS]
#   e.g. scripts/bench-pitr.sh target/release/examples/atlas_backup 70 10
# The binary needs the `postgres` feature:
#   cargo build --release -p atlas-examples --features postgres --example atlas_backup
# Run as root the server and atlas_backup run as user postgres (initdb
# refuses root). Needs PostgreSQL's programs (postgresql-15) and GNU time.
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,20p "$0" >&2; exit 2; }
ATLAS=$(realpath "$1"); SCALE=${2:-70}; SEGMENTS=${3:-10}
BIN=${ATLAS_PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
WORK=$(mktemp -d /var/tmp/atlas-bench-pitr.XXXXXX)
AS=(); [ "$(id -u)" = 0 ] && AS=(runuser -u postgres --) && chown postgres: "$WORK"
chmod 711 "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PGDATA=$WORK/data
stop() {
  "${AS[@]}" "$BIN/pg_ctl" -D "$PGDATA" -m immediate -w stop >/dev/null 2>&1 || true
  for d in "$WORK"/restored; do
    [ -f "$d/postmaster.pid" ] && "${AS[@]}" "$BIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1
  done
  rm -rf "$WORK"
}
trap stop EXIT
printf 'bench-passphrase' >"$WORK/pw"; chmod 644 "$WORK/pw"
A=("${AS[@]}" "$ATLAS" --password-file "$WORK/pw" --quiet)
REPO=(--repo "file://$WORK/repo")
export PGHOST=127.0.0.1 PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

"${A[@]}" "${REPO[@]}" init >/dev/null
"${AS[@]}" "$BIN/initdb" -D "$PGDATA" -U postgres -A trust -E UTF8 --no-locale --no-sync >/dev/null
cat >>"$PGDATA/postgresql.conf" <<CONF
wal_level = replica
archive_mode = on
archive_command = '$ATLAS --password-file $WORK/pw --quiet --repo file://$WORK/repo wal-push %p'
max_wal_size = 4GB
checkpoint_timeout = 30min
CONF
"${AS[@]}" "$BIN/pg_ctl" -D "$PGDATA" -l "$WORK/server.log" -w \
  -o "-p $PORT -k $WORK -c listen_addresses=127.0.0.1" start >/dev/null

wait_archived() { # until the segment just switched away from is archived
  local seg; seg=$(psql -Atc "SELECT pg_walfile_name(pg_switch_wal())")
  until [ "$(psql -Atc "SELECT coalesce(last_archived_wal,'') >= '$seg' FROM pg_stat_archiver")" = t ]; do sleep 0.5; done
}

t=$(now); "$BIN/pgbench" -i -q -s "$SCALE" >/dev/null 2>&1; T_INIT=$(secs "$t" "$(now)")
t=$(now); wait_archived; T_ARCHIVE_DRAIN=$(secs "$t" "$(now)")
DB_MIB=$(psql -Atc "SELECT pg_database_size('postgres') / 1048576")
ARCHIVED=$(psql -Atc "SELECT archived_count FROM pg_stat_archiver")

# 2. base backups: plain to a directory, then into the repository.
rm -rf "$WORK/plain"; sync
t=$(now); "$BIN/pg_basebackup" -D "$WORK/plain" -Ft -X fetch --checkpoint=fast --manifest-checksums=SHA256 -w
T_PLAIN=$(secs "$t" "$(now)"); PLAIN_MIB=$(du -sm "$WORK/plain" | cut -f1); rm -rf "$WORK/plain"; sync
t=$(now); /usr/bin/time -f "%M" -o "$WORK/rss" "${A[@]}" "${REPO[@]}" pg-backup >"$WORK/pg-backup.out"
T_ATLAS=$(secs "$t" "$(now)"); RSS_MIB=$(( $(cat "$WORK/rss") / 1024 ))

# 3. WAL push latency, segment by segment, into a fresh repository.
"${A[@]}" --repo "file://$WORK/repo2" init >/dev/null
mkdir -p "$WORK/segs"; [ ${#AS[@]} -gt 0 ] && chown postgres: "$WORK/segs"
n=0
while [ $n -lt "$SEGMENTS" ]; do
  name=$(printf '00000001%08X%08X' 0 $((n + 3)))
  "${A[@]}" "${REPO[@]}" wal-fetch "$name" "$WORK/segs/$name" || break
  n=$((n + 1))
done
push_times() {
  for f in "$WORK"/segs/*; do
    s=$(now); "${A[@]}" --repo "file://$WORK/repo2" wal-push "$f" >/dev/null; e=$(now)
    awk -v a="$s" -v b="$e" 'BEGIN { printf "%.0f\n", (b - a) * 1000 }'
  done | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
PUSH_MS=$(push_times); REPUSH_MS=$(push_times)

# 4. restore to a time in the middle of a pgbench run.
"$BIN/pgbench" -T 20 -c 2 >/dev/null 2>&1
sleep 1; MARKER=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ); sleep 1
"$BIN/pgbench" -T 10 -c 2 >/dev/null 2>&1
wait_archived
RPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
t=$(now)
"${A[@]}" "${REPO[@]}" pg-restore --pgdata "$WORK/restored" --target-time "$MARKER" --port "$RPORT" >"$WORK/restore.out"
T_RESTORE=$(secs "$t" "$(now)")
PHASES=$(grep '^phases:' "$WORK/restore.out" | sed 's/^phases: //')
REACHED=$(grep -E '^recovery (reached|ended)' "$WORK/restore.out")

cat <<TABLE
PostgreSQL $("$BIN/postgres" --version | awk '{print $3}'), pgbench scale $SCALE: database $DB_MIB MiB, $ARCHIVED WAL files archived during init (pgbench -i ${T_INIT} s; archive caught up ${T_ARCHIVE_DRAIN} s after it ended).

| measure | result |
|---|---|
| base backup, plain pg_basebackup -Ft to a local directory | ${T_PLAIN} s ($PLAIN_MIB MiB) |
| base backup, atlas_backup pg-backup into the repository | ${T_ATLAS} s (peak RSS $RSS_MIB MiB) |
| ratio atlas / plain | $(awk -v a="$T_ATLAS" -v b="$T_PLAIN" 'BEGIN { printf "%.2f", a / b }') |
| wal-push, median per 16 MiB segment (new, $n segments) | ${PUSH_MS} ms |
| wal-push, median per segment already archived (same bytes) | ${REPUSH_MS} ms |
| pg-restore --target-time, total | ${T_RESTORE} s |
| phases | $PHASES |
| end point | $REACHED |
TABLE
