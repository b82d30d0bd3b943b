#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Where the cluster's ingress hop spends its CPU: gnomon under issue 19's MQTT workload (QoS 1,
# 600k messages, 10k devices) with perf sampling it for 6 s mid-run, then perf's samples by
# thread. Run it twice, side by side:
#   CLUSTER_LINE='cluster: { name: pc, partitions: 4, instance_id: i1, connection: bus }' bench/cluster_profile.sh
#   CLUSTER_LINE='' bench/cluster_profile.sh      (the direct path)
# Needs perf, mosquitto, and a build (gnomon, gnomon-test-broker, gnomon-sim).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CLUSTER_LINE=${CLUSTER_LINE:-}
W=$(mktemp -d /tmp/pc-XXXX)
printf 'listener 18841 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n' > $W/m.conf
/usr/sbin/mosquitto -c $W/m.conf 2>/dev/null & B=$!
build/gnomon-test-broker --port 0 --partitions 4 > $W/k.out 2>&1 & K=$!
sleep 0.5
BS=$(head -1 $W/k.out)
mkdir -p $W/rules
cat > $W/rules/merge.lua <<'LUA'
local devices = {}
return rule { name = "merge", from = "devices/+/telemetry",
  handle = function(msg, ctx)
    local s = devices[msg.device]
    if s == nil then s = { count = 0 }; devices[msg.device] = s end
    for k, v in json.pairs(msg.payload) do s[k] = v end
    s.count = s.count + 1
    if s.temp > 50 then
      ctx.publish("alerts/" .. msg.device, { device = msg.device, temp = s.temp, count = s.count, sent = s.sent }, { qos = 1 })
    end
  end }
LUA
cat > $W/gnomon.yaml <<YAML
workers: 2
data_dir: data
connections:
  bus: { type: kafka, brokers: "$BS" }
  broker: { type: mqtt, url: "mqtt://127.0.0.1:18841", client_id: gnomon-bench, clean_session: true }
sources:
  - { name: telemetry, connection: broker, topics: ["devices/+/telemetry"], qos: 1 }
sinks:
  - { name: devices, connection: broker, qos: 1, max_inflight: 1000 }
rules: ["rules/*.lua"]
log: { level: warn }
${CLUSTER_LINE}
YAML
(cd $W && exec "$ROOT"/build/gnomon run -c gnomon.yaml 2>$W/g.log) & G=$!
sleep 4
build/gnomon-sim load --url mqtt://127.0.0.1:18841 --count 600000 --devices 10000 --qos 1 --shape telemetry --publish 'devices/{d}/telemetry' --expect 'alerts/+' --expect-count 100000 --timeout 120 > $W/load.out &
L=$!
sleep 3
perf record -g -o $W/perf.data -p $G -- sleep 6 2>/dev/null >/dev/null
wait $L || true
cat $W/load.out
perf report -i $W/perf.data --no-children --sort comm -g none -n --stdio 2>/dev/null | grep "%" | head -20
kill $G $K $B; wait 2>/dev/null || true
rm -rf $W
