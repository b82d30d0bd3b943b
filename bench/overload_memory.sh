#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Memory under overload (the containment issue's workload): a local mosquitto, DEVICES devices
# (default 10000) publishing N telemetry messages at QoS 1 as fast as the broker takes them,
# every message reported to its device's durable shadow by the rule, so gnomon is slower than
# its source. Prints each binary's rate (messages / time until it is idle again) and peak RSS
# (VmHWM), in one run.
#   bench/overload_memory.sh [N] [GNOMON_BINARY...]   (default 200000, build/gnomon)
#   QOS=0 publishes and subscribes at QoS 0 (no in-flight window at the broker: the case where
#   gnomon itself must bound what it holds); EXTRA='shadows: { store: sqlite, history_mb: 1 }'
#   replaces the shadows line.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
shift || true
BINS=("$@")
[ ${#BINS[@]} -eq 0 ] && BINS=(build/gnomon)
PORT=${PORT:-18831}
WORK=$(mktemp -d /tmp/gnomon-bench-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n' "$PORT" > "$WORK/m.conf"
/usr/sbin/mosquitto -c "$WORK/m.conf" 2>/dev/null & PIDS+=($!)
sleep 0.5
mkdir -p "$WORK/rules"
cat > "$WORK/rules/report.lua" <<'LUA'
return rule { name = "report", from = "devices/+/telemetry",
  handle = function(msg, ctx)
    ctx.shadow:report(json.totable(msg.payload))
    if msg.payload.temp > 55 then ctx.publish("devices/" .. msg.device .. "/cmd", { fan = "on" }, { qos = 1 }) end
  end }
LUA
DEFAULT_SHADOWS='shadows: { store: sqlite }'
SHADOWS_LINE=${EXTRA:-$DEFAULT_SHADOWS}
for bin in "${BINS[@]}"; do
  rm -rf "$WORK/data"
  cat > "$WORK/gnomon.yaml" <<YAML
workers: 2
data_dir: data
connections:
  broker: { type: mqtt, url: "mqtt://127.0.0.1:$PORT", client_id: gnomon-overload, clean_session: true }
sources:
  - { name: telemetry, connection: broker, topics: ["devices/+/telemetry"], qos: ${QOS:-1} }
sinks:
  - { name: devices, connection: broker, qos: 1, max_inflight: 1000 }
rules: ["rules/*.lua"]
log: { level: warn }
$SHADOWS_LINE
YAML
  "$bin" run -c "$WORK/gnomon.yaml" 2>"$WORK/gnomon.log" & GN=$!
  sleep 1
  t0=$(date +%s.%N)
  build/gnomon-sim load --url "mqtt://127.0.0.1:$PORT" --count "$N" --devices "${DEVICES:-10000}" \
    --publish 'devices/{d}/telemetry' --expect 'nothing/#' --qos ${QOS:-1} --timeout 1 >/dev/null || true  # receives nothing: exit 1
  # The broker now holds gnomon's backlog: wait until gnomon has worked through it (it uses
  # under 5% of a core for two seconds running), then read its peak.
  cpu() { awk '{ print $14 + $15 }' "/proc/$GN/stat" 2>/dev/null || { echo "gnomon exited:" >&2; tail -5 "$WORK/gnomon.log" >&2; exit 1; }; }
  for _ in $(seq 1 300); do
    c0=$(cpu); sleep 2; c1=$(cpu)
    [ $((c1 - c0)) -lt 10 ] && break
  done
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$GN/status")
  kill -TERM "$GN"; wait "$GN" || true
  t1=$(date +%s.%N)
  python3 -c "import sys; print(f'{sys.argv[1]}: {int(sys.argv[2])/(float(sys.argv[4])-float(sys.argv[3])-2):.0f} msg/s through gnomon, peak RSS {int(sys.argv[5])//1024} MB')" \
    "$bin" "$N" "$t0" "$t1" "$hwm"
done
