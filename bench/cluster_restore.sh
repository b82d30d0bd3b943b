#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Restore from the change log (issue 16): N shadows of ~1.3 KB in {name}.changelog (P
# partitions, murmur2 by device, as a cluster writes them) on the development cluster
# (librdkafka's mock cluster, 3 brokers); one gnomon cluster instance with an empty store is
# given all P partitions and restores them before it processes anything. Against, in the same
# run, a plain librdkafka read of the same records (no parsing, no store).
# The mock cluster keeps ~5 MB per partition (older records are dropped), so P is 32 by
# default: ~3,100 records of 1.3 KB per partition for N = 100000.
#   bench/cluster_restore.sh [N]          (default 100000; GNOMON=path: another build to run)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
P=${P:-32}
PORT=${PORT:-19471}
WORK=$(mktemp -d /tmp/gnomon-bench-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

build/gnomon-kafka-dev --topic fleet.ingress:$P --topic fleet.changelog:$P > "$WORK/cluster.out" & PIDS+=($!)
for _ in $(seq 50); do grep -q bootstrap "$WORK/cluster.out" && break; sleep 0.1; done
B=$(sed -n 's/bootstrap: //p' "$WORK/cluster.out")
echo "loading $N change-log records..."
build/gnomon-kafka-bench changelog "$B" fleet.changelog "$N"

echo "plain read of the change log (librdkafka, no parsing):"
READ=$(build/gnomon-kafka-bench read "$B" fleet.changelog "$P" "$N")
echo "$READ"

mkdir -p "$WORK/rules"
cat > "$WORK/rules/none.lua" <<'LUA'
return rule { name = "none", from = "nothing/here", handle = function(msg, ctx) end }
LUA
cat > "$WORK/gnomon.yaml" <<YAML
workers: 2
data_dir: data
connections:
  bus: { type: kafka, brokers: "$B" }
cluster: { name: fleet, partitions: $P, instance_id: bench-1, connection: bus }
shadows: { sync: ${SYNC:-full} }
rules: ["rules/*.lua"]
metrics: { listen: "127.0.0.1:$PORT" }
YAML
${GNOMON_WRAP:-} ${GNOMON:-build/gnomon} run -c "$WORK/gnomon.yaml" 2>"$WORK/gnomon.log" & PIDS+=($!)
for _ in $(seq 1200); do grep -q '"cluster partitions restored"' "$WORK/gnomon.log" && break; sleep 0.1; done
grep -q '"cluster partitions restored"' "$WORK/gnomon.log" || { echo "no restore in 120 s:"; tail -20 "$WORK/gnomon.log"; exit 1; }
LINE=$(grep '"cluster partitions restored"' "$WORK/gnomon.log" | head -1)
echo "restore (read, parse, write to the store, commit):"
echo "$LINE"
python3 - "$READ" "$LINE" <<'PY'
import json, sys
r, g = json.loads(sys.argv[1]), json.loads(sys.argv[2])
shadows, ms = int(g["shadows"]), int(g["ms"])
rate = shadows / (ms / 1000.0)
print(f"restored {shadows} shadows in {ms} ms: {rate:.0f} shadows/s; "
      f"{rate / r['records_per_s']:.2f} of the plain read")
PY
