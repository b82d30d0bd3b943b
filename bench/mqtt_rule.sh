#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Issue 19's workload, side by side in one run: MQTT in → a rule that merges every field of the
# telemetry into its device's state, counts it and publishes an alert for 1 message in 6 → MQTT
# out, through a local mosquitto; 10k devices, ~200-byte telemetry, the publisher at the
# broker's max rate. Four systems, each started fresh for each trial:
#   alone     mosquitto alone: a subscriber reads the telemetry (what the broker can carry)
#   baseline  build/gnomon-mqtt-baseline, the hand-written one-thread C++ program
#   gnomon    the rule in Lua, the state in a Lua table
#   shadow    the same rule keeping the state in the device's durable shadow (SQLite), QoS 1
#             only (SHADOW=0 leaves it out)
#   previous  with PREV=path/to/another/gnomon: that build running the gnomon rule (A/B runs)
#   prevshadow  with PREV: that build running the shadow rule (QoS 1, unless SHADOW=0)
#   cluster   with CLUSTER=1: the gnomon rule on a one-instance cluster (docs/cluster.md): every
#             message goes MQTT → the ingress topic on a local Kafka (add_cluster below; its CPU
#             is not counted) → the owner → MQTT (issue 16's ingress hop, against `gnomon` in
#             the same run)
#   clustershadow  with CLUSTER=1 and the shadow system: the shadow rule on a one-instance
#             cluster (every accepted write also goes to the change log {name}.changelog), QoS 1
# For each QoS (0 and 1) it prints, per system, the median of TRIALS trials of: input messages
# per second, CPU µs per message of the processing process, its peak RSS, and the alerts'
# latency percentiles; then p99 at a steady 5k msg/s; then the ratios the issue's targets use.
#   bench/mqtt_rule.sh [N]       (default 300000; the issue's figures used 1000000)
#   TRIALS=3 DEVICES=10000 QOS="0 1" SHADOW=1 WORKERS=2 bench/mqtt_rule.sh 1000000
#   SYSTEMS="baseline shadow" QOS=1 SHADOW_OPTS="history_mb: 8" bench/mqtt_rule.sh   only those
#   (no 5k msg/s latency runs unless STEADY=1), with options for the shadow system's shadows:
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
N=${1:-300000}
N=$((N / 6 * 6))  # a multiple of 6, so the last message is an alert and marks the end
TRIALS=${TRIALS:-1}
DEVICES=${DEVICES:-10000}
QOS_LIST=${QOS:-0 1}
SHADOW=${SHADOW:-1}
WORKERS=${WORKERS:-2}
STEADY_N=${STEADY_N:-30000}  # messages of the 5k msg/s latency run (6 s)
PORT=${PORT:-18831}
WORK=$(mktemp -d /tmp/gnomon-bench-XXXXXX)
PROC=""
KAFKA=""
cleanup() {
  [ -n "$PROC" ] && kill -TERM "$PROC" 2>/dev/null || true
  [ -n "$KAFKA" ] && kill -TERM "$KAFKA" 2>/dev/null || true
  kill -TERM "$BROKER" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$WORK"; [ -n "${KEEP:-}" ] && echo "kept $WORK"
  return 0
}
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n' "$PORT" > "$WORK/m.conf"
/usr/sbin/mosquitto -c "$WORK/m.conf" 2>/dev/null &
BROKER=$!
trap cleanup EXIT
sleep 0.5

cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }
hwm_mb() { awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# The rule, for gnomon and for gnomon with the state in its shadow.
write_rules() {  # $1 qos, $2 lua|shadow
  rm -rf "$WORK/rules" "$WORK/data"
  mkdir -p "$WORK/rules"
  if [ "$2" = lua ]; then
    cat > "$WORK/rules/merge.lua" <<LUA
-- Merge every field into the device's state, count it, alert when the merged temp is above 50.
local devices = {}
return rule { name = "merge", from = "devices/+/telemetry",
  handle = function(msg, ctx)
    local s = devices[msg.device]
    if s == nil then s = { count = 0 }; devices[msg.device] = s end
    for k, v in json.pairs(msg.payload) do s[k] = v end
    s.count = s.count + 1
    if s.temp > 50 then
      ctx.publish("alerts/" .. msg.device,
                  { device = msg.device, temp = s.temp, count = s.count, sent = s.sent }, { qos = $1 })
    end
  end }
LUA
  else
    cat > "$WORK/rules/merge.lua" <<LUA
-- The same rule keeping the state in the device's durable shadow: the payload is merged into
-- reported (the shadow's version counts the messages), the alert reads the merged temp.
return rule { name = "merge", from = "devices/+/telemetry",
  handle = function(msg, ctx)
    local p = msg.payload
    ctx.shadow:report(p)
    if p.temp > 50 then
      ctx.publish("alerts/" .. msg.device,
                  { device = msg.device, temp = p.temp, count = (ctx.shadow.version or 0) + 1,
                    sent = p.sent }, { qos = $1 })
    end
  end }
LUA
  fi
  cat > "$WORK/gnomon.yaml" <<YAML
workers: $WORKERS
data_dir: data
connections:
  broker: { type: mqtt, url: "mqtt://127.0.0.1:$PORT", client_id: gnomon-bench, clean_session: true }
sources:
  - { name: telemetry, connection: broker, topics: ["devices/+/telemetry"], qos: $1 }
sinks:
  - { name: devices, connection: broker, qos: $1, max_inflight: 1000 }
rules: ["rules/*.lua"]
log: { level: warn }
YAML
  if [ "$2" = shadow ]; then
    echo "shadows: { store: sqlite${SHADOW_OPTS:+, $SHADOW_OPTS} }" >> "$WORK/gnomon.yaml"
  fi
}

# A one-instance cluster, a fresh cluster name per run, on a local Kafka: gnomon's test broker
# (tools/test_broker: one node in memory; like Kafka, a waiting fetch returns as soon as records
# arrive), or with CLUSTER_KAFKA=mock librdkafka's mock cluster (gnomon-kafka-dev), whose fetches
# wait their whole fetch.wait.max.ms (500 ms) when empty, which adds ~300 ms of latency no real
# Kafka has. KAFKA_PROPS="k: v, ..." adds librdkafka properties to the connection.
add_cluster() {
  if [ -z "$KAFKA" ]; then
    if [ "${CLUSTER_KAFKA:-test}" = mock ]; then
      build/gnomon-kafka-dev --brokers 1 > "$WORK/kafka.out" 2>&1 & KAFKA=$!
    else
      build/gnomon-test-broker --port 0 --partitions 4 > "$WORK/kafka.out" 2>&1 & KAFKA=$!
    fi
    for _ in $(seq 50); do grep -q '127.0.0.1:' "$WORK/kafka.out" && break; sleep 0.1; done
  fi
  local bs
  bs=$(head -1 "$WORK/kafka.out" | sed 's/^bootstrap: //')
  sed -i 's/^connections:$/connections:\n  bus: { type: kafka, brokers: "'"$bs"'"'"${KAFKA_PROPS:+, properties: { $KAFKA_PROPS \}}"' }/' "$WORK/gnomon.yaml"
  echo "cluster: { name: bench$RANDOM, partitions: 4, instance_id: i1, connection: bus }" >> "$WORK/gnomon.yaml"
}

start() {  # $1 system, $2 qos
  case $1 in
    baseline) build/gnomon-mqtt-baseline --port "$PORT" --qos "$2" 2>"$WORK/proc.log" & PROC=$! ;;
    gnomon | shadow | previous | prevshadow | cluster | clustershadow)
      local bin="$ROOT/build/gnomon"
      case $1 in previous | prevshadow) bin=$(realpath "$PREV") ;; esac
      write_rules "$2" "$(case $1 in shadow | prevshadow | clustershadow) echo shadow ;; *) echo lua ;; esac)"
      case $1 in cluster | clustershadow) add_cluster ;; esac
      (cd "$WORK" && exec "$bin" run -c gnomon.yaml 2>"$WORK/proc.log") & PROC=$! ;;
  esac
  sleep 1
  if [ "$1" = cluster ] || [ "$1" = clustershadow ]; then  # until it owns the partitions
    for _ in $(seq 100); do
      grep -q '"kafka partitions assigned"' "$WORK/proc.log" && break
      sleep 0.1
    done
  fi
}

stop() {
  kill -TERM "$PROC" 2>/dev/null || true
  wait "$PROC" 2>/dev/null || true
  PROC=""
}

# One trial: prints a JSON line with the load generator's figures, cpu_us (CPU of the processing
# process per input message) and rss_mb (its peak RSS).
trial() {  # $1 system, $2 qos, rest: extra load options
  local sys=$1 qos=$2 c0 c1 out hwm
  shift 2
  if [ "$sys" = alone ]; then
    out=$(build/gnomon-sim load --url "mqtt://127.0.0.1:$PORT" --count "$N" --devices "$DEVICES" \
      --qos "$qos" --shape telemetry --publish 'bench/{d}/telemetry' --expect 'bench/+/telemetry' \
      --timeout 120 "$@") || true
    echo "$out"
    return
  fi
  start "$sys" "$qos"
  c0=$(cpu_s "$PROC")
  out=$(build/gnomon-sim load --url "mqtt://127.0.0.1:$PORT" --count "${COUNT:-$N}" \
    --devices "$DEVICES" --qos "$qos" --shape telemetry --publish 'devices/{d}/telemetry' \
    --expect 'alerts/+' --expect-count "$((${COUNT:-$N} / 6))" --timeout 120 "$@") || true
  c1=$(cpu_s "$PROC")
  hwm=$(hwm_mb "$PROC")
  stop
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["cpu_us"]=round((float(sys.argv[3])-float(sys.argv[2]))*1e6/int(sys.argv[5]),1); r["rss_mb"]=float(sys.argv[4]); print(json.dumps(r))' \
    "$out" "$c0" "$c1" "$hwm" "${COUNT:-$N}"
}

RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
for qos in $QOS_LIST; do
  systems="alone baseline gnomon"
  [ -n "${PREV:-}" ] && systems="$systems previous"
  [ -n "${CLUSTER:-}" ] && systems="$systems cluster"
  systems=${SYSTEMS:-$systems}
  if [ "$SHADOW" = 1 ] && [ "$qos" = 1 ]; then
    case " $systems " in *" shadow "*) ;; *) systems="$systems shadow" ;; esac
    [ -n "${CLUSTER:-}" ] && case " $systems " in *" clustershadow "*) ;; *) systems="$systems clustershadow" ;; esac
    [ -n "${PREV:-}" ] && case " $systems " in *" prevshadow "*) ;; *) systems="$systems prevshadow" ;; esac
  fi
  for t in $(seq "$TRIALS"); do
    for sys in $systems; do
      r=$(trial "$sys" "$qos")
      echo "qos $qos trial $t $sys: $r"
      echo "{\"qos\":$qos,\"sys\":\"$sys\",\"kind\":\"max\",\"r\":$r}" >> "$RESULTS"
    done
  done
  [ -n "${SYSTEMS:-}" ] && [ -z "${STEADY:-}" ] && continue
  for sys in baseline gnomon ${PREV:+previous} ${CLUSTER:+cluster}; do
    r=$(COUNT=$STEADY_N trial "$sys" "$qos" --rate 5000)
    echo "qos $qos steady 5k msg/s $sys: $r"
    echo "{\"qos\":$qos,\"sys\":\"$sys\",\"kind\":\"steady\",\"r\":$r}" >> "$RESULTS"
  done
done

python3 - "$RESULTS" "$N" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
n = int(sys.argv[2])
def med(qos, sys_, key, kind="max"):
    v = [r["r"].get(key) for r in rows if r["qos"] == qos and r["sys"] == sys_ and r["kind"] == kind]
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None
for qos in sorted({r["qos"] for r in rows}):
    print(f"\nQoS {qos}, {n} messages, median of the trials:")
    print(f"{'':10} {'msg/s':>9} {'cpu µs/msg':>11} {'peak RSS MB':>12} {'p50 ms':>8} {'p99 ms':>8} {'p99 @5k ms':>11} {'lost':>6}")
    for s in ("alone", "baseline", "gnomon", "previous", "cluster", "shadow", "prevshadow",
              "clustershadow"):
        rate = med(qos, s, "sent_per_s")
        if rate is None:
            continue
        expected = n if s == "alone" else n // 6
        lost = expected - (med(qos, s, "received") or 0)
        cpu, rss = med(qos, s, "cpu_us"), med(qos, s, "rss_mb")
        steady = med(qos, s, "p99_ms", "steady")
        f = lambda x, fmt: "—" if x is None else format(x, fmt)
        print(f"{s:10} {rate:9.0f} {f(cpu, '11.1f')} {f(rss, '12.1f')} {med(qos, s, 'p50_ms'):8.2f} "
              f"{med(qos, s, 'p99_ms'):8.2f} {f(steady, '11.2f')} {lost:6.0f}")
    b, g = med(qos, "baseline", "sent_per_s"), med(qos, "gnomon", "sent_per_s")
    if b and g:
        print(f"gnomon / baseline: throughput {g / b:.2f} (target ≥ 0.9), CPU per message "
              f"{med(qos, 'gnomon', 'cpu_us') / med(qos, 'baseline', 'cpu_us'):.2f}× (target ≤ 1.25), "
              f"peak RSS {med(qos, 'gnomon', 'rss_mb'):.0f} MB (target ≤ 30)")
    p = med(qos, "previous", "sent_per_s")
    if p and g:
        print(f"gnomon / previous: throughput {g / p:.2f}, CPU per message "
              f"{med(qos, 'gnomon', 'cpu_us') / med(qos, 'previous', 'cpu_us'):.2f}×")
    c = med(qos, "cluster", "sent_per_s")
    if c and g:
        print(f"cluster / gnomon (the ingress hop): throughput {c / g:.2f} (target ≥ 0.7), CPU per "
              f"message {med(qos, 'cluster', 'cpu_us') / med(qos, 'gnomon', 'cpu_us'):.2f}×")
    a = med(qos, "alone", "sent_per_s")
    if a and b:
        print(f"of mosquitto alone: baseline {b / a:.2f}, gnomon {g / a:.2f}")
    sh = med(qos, "shadow", "sent_per_s")
    if sh:
        print(f"shadow: {sh:.0f} msg/s (target ≥ 45000), peak RSS {med(qos, 'shadow', 'rss_mb'):.0f} MB "
              f"(target ≤ 150)" + (f", {sh / b:.2f} of the baseline" if b else ""))
    cs = med(qos, "clustershadow", "sent_per_s")
    if sh and cs:
        print(f"clustershadow / shadow (ingress hop + change log): throughput {cs / sh:.2f}, CPU per "
              f"message {med(qos, 'clustershadow', 'cpu_us') / med(qos, 'shadow', 'cpu_us'):.2f}×")
    ps = med(qos, "prevshadow", "sent_per_s")
    if sh and ps:
        print(f"shadow / previous shadow: throughput {sh / ps:.2f}, CPU per message "
              f"{med(qos, 'shadow', 'cpu_us') / med(qos, 'prevshadow', 'cpu_us'):.2f}×, peak RSS "
              f"{med(qos, 'shadow', 'rss_mb'):.0f} vs {med(qos, 'prevshadow', 'rss_mb'):.0f} MB")
PY
