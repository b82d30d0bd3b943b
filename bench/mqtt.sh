#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# MQTT → rule → MQTT through a local mosquitto at QoS 1, against mosquitto alone
# (publisher → subscriber) and against a bare relay client (gnomon-sim relay: subscribe,
# publish again, nothing else) in the same run. Prints the JSON results, the ratios and how
# busy the broker was in each phase (mosquitto is single-threaded: once it is at 100% of a core
# it is the limit, and every message through gnomon or the relay crosses it twice).
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
BROKER=$!
sleep 0.5
# CPU seconds the broker has used so far (utime + stime of /proc/PID/stat).
broker_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$BROKER/stat"; }
# Busy and total jiffies of the whole machine (all cores), from /proc/stat.
machine_cpu() { awk '/^cpu / { printf "%d %d", $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }
# Runs the load generator; prints its JSON with the broker's busy share of the run added.
measure() {
  local c0 t0 out c1 t1
  c0=$(broker_cpu); t0=$(date +%s.%N); m0=$(machine_cpu)
  out=$(build/gnomon-sim load --url "mqtt://127.0.0.1:$PORT" --count "$N" --devices "${DEVICES:-1000}" "$@")
  c1=$(broker_cpu); t1=$(date +%s.%N); m1=$(machine_cpu)
  # broker_busy: share of one core; machine_busy: share of all cores (the run includes the load
  # generator's ~0.5 s of connecting, so both are a little low).
  python3 -c "import json,sys; a=sys.argv; r=json.loads(a[1]); r['broker_busy']=round((float(a[3])-float(a[2]))/(float(a[5])-float(a[4])),2); b0,t0=map(int,a[6].split()); b1,t1=map(int,a[7].split()); r['machine_busy']=round((b1-b0)/max(1,t1-t0),2); print(json.dumps(r))" \
    "$out" "$c0" "$c1" "$t0" "$t1" "$m0" "$m1"
}

echo "mosquitto alone (publisher → subscriber):"
BASE=$(measure --publish 'bench/{d}/in' --expect 'bench/+/in')
echo "$BASE"

echo "bare relay (publisher → gnomon-sim relay → subscriber; no rules, acknowledges on receipt):"
build/gnomon-sim relay --url "mqtt://127.0.0.1:$PORT" --from 'relay/+/in' --to 'relay/{d}/out' & RELAY=$!
PIDS+=($RELAY)
sleep 0.5
REL=$(measure --publish 'relay/{d}/in' --expect 'relay/+/out')
echo "$REL"
kill -TERM "$RELAY"; wait "$RELAY" 2>/dev/null || true

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
GN=$(measure --publish 'devices/{d}/telemetry' --expect 'devices/+/cmd')
echo "$GN"
python3 - "$BASE" "$REL" "$GN" <<'PY'
import json, sys
b, r, g = (json.loads(a) for a in sys.argv[1:4])
print(f"ratio: {g['msgs_per_s'] / b['msgs_per_s']:.2f} of mosquitto alone, "
      f"{g['msgs_per_s'] / r['msgs_per_s']:.2f} of the bare relay "
      f"(relay: {r['msgs_per_s'] / b['msgs_per_s']:.2f} of mosquitto alone); "
      f"p99 {g['p99_ms']} ms vs {b['p99_ms']} ms alone, {r['p99_ms']} ms relay; "
      f"broker busy {b['broker_busy']:.0%} / {r['broker_busy']:.0%} / {g['broker_busy']:.0%} of a core, "
      f"machine {b['machine_busy']:.0%} / {r['machine_busy']:.0%} / {g['machine_busy']:.0%} of both")
PY
