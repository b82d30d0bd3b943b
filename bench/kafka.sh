#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Kafka → overheat-shaped rule (emits every message) → Kafka, at-least-once, against a no-logic
# librdkafka consume→produce passthrough, on the same development cluster (librdkafka's mock
# cluster, 3 brokers, 4 partitions) in the same run. ~200-byte JSON, 10k devices.
#   bench/kafka.sh [N]          (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
PORT=${PORT:-19470}
WORK=$(mktemp -d /tmp/gnomon-bench-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

build/gnomon-kafka-dev --topic in:4 --topic out-pass:4 --topic out-gnomon:4 > "$WORK/cluster.out" & PIDS+=($!)
for _ in $(seq 50); do grep -q bootstrap "$WORK/cluster.out" && break; sleep 0.1; done
B=$(sed -n 's/bootstrap: //p' "$WORK/cluster.out")
echo "loading $N records into 'in'..."
build/gnomon-kafka-bench load "$B" in "$N" 10000

echo "passthrough (librdkafka consume → produce, no logic):"
PASS=$(build/gnomon-kafka-bench pass "$B" in out-pass bench-pass "$N")
echo "$PASS"

mkdir -p "$WORK/rules"
cat > "$WORK/rules/overheat.lua" <<'LUA'
return rule { name = "overheat", from = "in",
  handle = function(msg, ctx)
    local t = msg.payload.temp
    ctx.emit("out", { device = msg.device, temp = t, severity = t > 55 and "high" or "ok" })
  end }
LUA
cat > "$WORK/gnomon.yaml" <<YAML
workers: 2
data_dir: data
connections:
  bus: { type: kafka, brokers: "$B" }
sources:
  - { name: in, connection: bus, topics: [in], group: bench-gnomon, device: key, max_inflight: ${MAX_INFLIGHT:-5000} }
sinks:
  - { name: out, connection: bus, topic: out-gnomon, properties: { linger.ms: 5 } }
rules: ["rules/*.lua"]
metrics: { listen: "127.0.0.1:$PORT" }
log: { level: warn }
YAML
${GNOMON_WRAP:-} build/gnomon run -c "$WORK/gnomon.yaml" 2>"$WORK/gnomon.log" & PIDS+=($!)
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | sed -n "s/^$1 //p"; }
until [ "$(metric gnomon_messages_in_total || echo 0)" -gt 0 ] 2>/dev/null; do sleep 0.02; done
T0=$(date +%s.%N)
until [ "$(metric gnomon_messages_done_total)" -ge "$N" ] 2>/dev/null; do sleep 0.05; done
T1=$(date +%s.%N)
GN=$(python3 -c "n=$N; s=$T1-$T0; print('{\"records\":%d,\"seconds\":%.3f,\"records_per_s\":%.0f}' % (n, s, n/s))")
echo "through gnomon (consume → rule → produce, offsets committed after delivery):"
echo "$GN"
python3 - "$PASS" "$GN" <<'PY'
import json, sys
p, g = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ratio: {g['records_per_s'] / p['records_per_s']:.2f} of the passthrough")
PY
