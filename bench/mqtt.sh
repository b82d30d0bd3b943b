#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# MQTT → rule → MQTT through a local mosquitto at QoS 1, against mosquitto alone
# (publisher → subscriber) in the same run. Prints both JSON results and the ratio.
#   bench/mqtt.sh [N]          (default 200000)
#   SHADOWS=1 DEVICES=10000 bench/mqtt.sh [N]   every message also reports to its shadow
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
PORT=${PORT:-18830}
WORK=$(mktemp -d /tmp/gnomon-bench-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n' "$PORT" > "$WORK/m.conf"
/usr/sbin/mosquitto -c "$WORK/m.conf" 2>/dev/null & PIDS+=($!)
sleep 0.5

echo "mosquitto alone (publisher → subscriber):"
BASE=$(build/gnomon-sim load --url "mqtt://127.0.0.1:$PORT" --count "$N" --devices "${DEVICES:-1000}" \
  --publish 'bench/{d}/in' --expect 'bench/+/in')
echo "$BASE"

mkdir -p "$WORK/rules"
cat > "$WORK/rules/echo.lua" <<'LUA'
-- The overheat rule's shape: read fields, publish a command back with the sender's clock.
return rule { name = "echo", from = "devices/+/telemetry",
  handle = function(msg, ctx)
    local p = msg.payload
    if p.temp > 50 or REPORT then
      ctx.publish("devices/" .. msg.device .. "/cmd", { fan = "on", sent = p.sent }, { qos = 1 })
    end
    if REPORT then ctx.shadow:report { temp = p.temp } end
  end }
LUA
if [ "${SHADOWS:-0}" = 1 ]; then
  # Issue 4's rule-driven benchmark: every message is also reported to its device's shadow
  # (durable in SQLite before the message is acknowledged), over DEVICES devices.
  sed -i 's/REPORT/true/g' "$WORK/rules/echo.lua"
else
  sed -i 's/REPORT/false/g' "$WORK/rules/echo.lua"
fi
cat > "$WORK/gnomon.yaml" <<YAML
workers: 2
data_dir: data
connections:
  broker: { type: mqtt, url: "mqtt://127.0.0.1:$PORT", client_id: gnomon-bench, clean_session: true }
sources:
  - { name: telemetry, connection: broker, topics: ["devices/+/telemetry"], qos: 1 }
sinks:
  - { name: devices, connection: broker, qos: 1, max_inflight: 1000 }
rules: ["rules/*.lua"]
log: { level: warn }
YAML
[ "${SHADOWS:-0}" = 1 ] && echo "shadows: { store: sqlite }" >> "$WORK/gnomon.yaml"
build/gnomon run -c "$WORK/gnomon.yaml" 2>"$WORK/gnomon.log" & PIDS+=($!)
sleep 1
echo "through gnomon (publisher → gnomon rule → subscriber):"
GN=$(build/gnomon-sim load --url "mqtt://127.0.0.1:$PORT" --count "$N" --devices "${DEVICES:-1000}" \
  --publish 'devices/{d}/telemetry' --expect 'devices/+/cmd')
echo "$GN"
python3 - "$BASE" "$GN" <<'PY'
import json, sys
b, g = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ratio: {g['msgs_per_s'] / b['msgs_per_s']:.2f} of mosquitto alone; "
      f"p99 {g['p99_ms']} ms vs {b['p99_ms']} ms")
PY
