#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# HTTP ingest, webhook (single and batched), PostgreSQL and MariaDB sink throughput, end to end
# through build/gnomon (gnomon-sink-bench starts it and the receiver). Starts a throwaway
# PostgreSQL cluster (initdb in a temp dir; as the postgres user when run as root) and a
# throwaway MariaDB server (mariadb-install-db in a temp dir).
#   bench/sinks.sh [N]          (default 500000; the single-record webhook run uses N/10)
#   SQL_ONLY=1 bench/sinks.sh   (only the two SQL runs, side by side)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-500000}
BIN=build/gnomon-sink-bench
WORK=$(mktemp -d /tmp/gnomon-bench-XXXXXX)
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PORT=${PORT:-19480}
MY_PORT=${MY_PORT:-19481}
as_pg() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups "$@"; else "$@"; fi; }
cleanup() {
  as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
  if [ -f "$WORK/my.pid" ]; then kill "$(cat "$WORK/my.pid")" 2>/dev/null || true; sleep 2; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
as_pg "$PG_BIN/initdb" -D "$WORK/pg" -U gnomon --auth=trust >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -o "-p $PORT -h 127.0.0.1 -k $WORK" -l "$WORK/pg.log" -w start >/dev/null
# MariaDB as Debian configures it (utf8mb4), durable commits (innodb_flush_log_at_trx_commit=1,
# as PostgreSQL's fsync=on), the buffer pool sized like PostgreSQL's shared_buffers default.
ROOT_OPT=(); [ "$(id -u)" = 0 ] && ROOT_OPT=(--user=root)
mariadb-install-db --no-defaults --datadir="$WORK/my" --auth-root-authentication-method=normal \
  --skip-test-db "${ROOT_OPT[@]}" >/dev/null 2>&1
printf "CREATE USER IF NOT EXISTS 'gnomon'@'%%' IDENTIFIED BY 'bench';\nGRANT ALL ON *.* TO 'gnomon'@'%%';\nCREATE DATABASE IF NOT EXISTS bench;\n" >"$WORK/my-init.sql"
/usr/sbin/mariadbd --no-defaults --datadir="$WORK/my" --port="$MY_PORT" --bind-address=127.0.0.1 \
  --socket="$WORK/my.sock" --pid-file="$WORK/my.pid" --init-file="$WORK/my-init.sql" \
  --character-set-server=utf8mb4 --skip-name-resolve --innodb-buffer-pool-size=128M \
  "${ROOT_OPT[@]}" >"$WORK/my.log" 2>&1 &
for _ in $(seq 100); do
  mariadb-admin --no-defaults -h 127.0.0.1 -P "$MY_PORT" -u gnomon -pbench status >/dev/null 2>&1 && break
  sleep 0.2
done

if [ -z "${SQL_ONLY:-}" ]; then
  echo "== HTTP ingest (NDJSON, 1000 lines a request, rule drops)"
  $BIN --mode ingest --messages "$N" --batch 1000 --clients 4
  echo "== HTTP ingest, one message a request (requests/s = messages/s)"
  $BIN --mode ingest --messages "$((N / 10))" --batch 1 --clients 8
  echo "== webhook, batched (JSON arrays of up to 500 records)"
  $BIN --mode webhook-batch --messages "$N" --batch 1000 --clients 4
  echo "== webhook, one record per request"
  $BIN --mode webhook --messages "$((N / 10))" --batch 100 --clients 4
fi
echo "== PostgreSQL (batches of up to 2000 rows)"
$BIN --mode postgres --messages "$N" --batch 1000 --clients 4 \
  --pg "postgresql://gnomon@127.0.0.1:$PORT/postgres"
echo "== MariaDB (batches of up to 2000 rows, bulk executions)"
$BIN --mode mariadb --messages "$N" --batch 1000 --clients 4 \
  --mysql "mysql://gnomon:bench@127.0.0.1:$MY_PORT/bench"
echo "== MariaDB without bulk executions (multi-row INSERTs: the path MySQL servers get)"
$BIN --mode mariadb --messages "$N" --batch 1000 --clients 4 \
  --mysql "mysql://gnomon:bench@127.0.0.1:$MY_PORT/bench?bulk=off"
