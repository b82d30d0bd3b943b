#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# HTTP ingest, webhook (single and batched) and PostgreSQL sink throughput, end to end through
# build/gnomon (gnomon-sink-bench starts it and the receiver). Starts a throwaway PostgreSQL
# cluster (initdb in a temp dir; as the postgres user when run as root).
#   bench/sinks.sh [N]          (default 500000; the single-record webhook run uses N/10)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-500000}
BIN=build/gnomon-sink-bench
WORK=$(mktemp -d /tmp/gnomon-bench-XXXXXX)
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PORT=${PORT:-19480}
as_pg() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups "$@"; else "$@"; fi; }
cleanup() { as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
as_pg "$PG_BIN/initdb" -D "$WORK/pg" -U gnomon --auth=trust >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$WORK/pg" -o "-p $PORT -h 127.0.0.1 -k $WORK" -l "$WORK/pg.log" -w start >/dev/null

echo "== HTTP ingest (NDJSON, 1000 lines a request, rule drops)"
$BIN --mode ingest --messages "$N" --batch 1000 --clients 4
echo "== HTTP ingest, one message a request (requests/s = messages/s)"
$BIN --mode ingest --messages "$((N / 10))" --batch 1 --clients 8
echo "== webhook, batched (JSON arrays of up to 500 records)"
$BIN --mode webhook-batch --messages "$N" --batch 1000 --clients 4
echo "== webhook, one record per request"
$BIN --mode webhook --messages "$((N / 10))" --batch 100 --clients 4
echo "== PostgreSQL (batches of up to 2000 rows)"
$BIN --mode postgres --messages "$N" --batch 1000 --clients 4 \
  --pg "postgresql://gnomon@127.0.0.1:$PORT/postgres"
