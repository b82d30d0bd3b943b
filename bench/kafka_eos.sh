#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Kafka → rule → Kafka exactly-once against at-least-once, and against a no-logic transactional
# librdkafka passthrough (transactions every 100 ms with the consumed offsets), on the Kafka
# test broker (tools/test_broker: real transaction semantics; 4 partitions) in the same run.
# The overheat-shaped rule of bench/kafka.sh, ~200-byte JSON, 10k devices. Each gnomon run
# starts a fresh group from the beginning of the same input; at-least-once and exactly-once
# alternate ROUNDS times.
#   bench/kafka_eos.sh [N]          (default 200000; ROUNDS=2)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-19471}
WORK=$(mktemp -d /tmp/gnomon-bench-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

build/gnomon-test-broker --partitions 4 > "$WORK/broker.out" & PIDS+=($!)
for _ in $(seq 50); do [ -s "$WORK/broker.out" ] && break; sleep 0.1; done
B=$(head -1 "$WORK/broker.out")
echo "loading $N records into 'in'..."
build/gnomon-kafka-bench load "$B" in "$N" 10000

echo "transactional passthrough (librdkafka consume → produce in transactions, no logic):"
PASS=$(build/gnomon-kafka-bench txpass "$B" in out-pass bench-pass "$N")
echo "$PASS"

mkdir -p "$WORK/rules"
cat > "$WORK/rules/overheat.lua" <<'LUA'
return rule { name = "overheat", from = "in",
  handle = function(msg, ctx)
    local t = msg.payload.temp
    ctx.emit("out", { device = msg.device, temp = t, severity = t > 55 and "high" or "ok" })
  end }
LUA
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | sed -n "s/^$1 //p"; }
# run MODE RUN: gnomon with delivery MODE on a fresh group and output topic; prints the JSON.
run() {
  cat > "$WORK/gnomon.yaml" <<YAML
workers: 2
data_dir: data-$2
connections:
  bus: { type: kafka, brokers: "$B" }
sources:
  - { name: in, connection: bus, topics: [in], group: bench-$2, device: key, delivery: $1,
      transactional_id: bench-$2 }
sinks:
  - { name: out, connection: bus, topic: out-$2, properties: { linger.ms: 5 } }
rules: ["rules/*.lua"]
metrics: { listen: "127.0.0.1:$PORT" }
log: { level: warn }
YAML
  ${GNOMON_WRAP:-} build/gnomon run -c "$WORK/gnomon.yaml" 2>"$WORK/gnomon-$2.log" &
  local pid=$!
  until [ "$(metric gnomon_messages_in_total || echo 0)" -gt 0 ] 2>/dev/null; do sleep 0.02; done
  local t0 t1
  t0=$(date +%s.%N)
  until [ "$(metric gnomon_messages_done_total)" -ge "$N" ] 2>/dev/null; do sleep 0.05; done
  if [ "$1" = exactly_once ]; then
    # done is before the commit: the output is visible once the group's offsets are
    until [ "$(build/gnomon-kafka-bench committed "$B" "bench-$2" in 4)" -ge "$N" ] 2>/dev/null; do sleep 0.02; done
  fi
  t1=$(date +%s.%N)
  kill -TERM "$pid"; wait "$pid" || true
  python3 -c "n=$N; s=$t1-$t0; print('{\"records\":%d,\"seconds\":%.3f,\"records_per_s\":%.0f}' % (n, s, n/s))"
}
ALO=(); EOS=()
for r in $(seq "$ROUNDS"); do
  A=$(run at_least_once "alo$r"); echo "at-least-once:  $A"; ALO+=("$A")
  E=$(run exactly_once "eos$r"); echo "exactly-once:   $E"; EOS+=("$E")
done
python3 - "$PASS" "${ALO[@]}" "${EOS[@]}" <<'PY'
import json, sys
p = json.loads(sys.argv[1])
rest = [json.loads(a) for a in sys.argv[2:]]
alo, eos = rest[:len(rest)//2], rest[len(rest)//2:]
a = sum(x["records_per_s"] for x in alo) / len(alo)
e = sum(x["records_per_s"] for x in eos) / len(eos)
print(f"exactly-once / at-least-once: {e / a:.2f} (means of {len(alo)} runs each)")
print(f"exactly-once / transactional passthrough: {e / p['records_per_s']:.2f}")
PY
