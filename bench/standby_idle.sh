#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# What an idle standby costs (issue 16): two cluster instances (8 partitions, standby_replicas:
# 1) on the development cluster with nothing to do; the second one's connect() calls over 20 s
# (strace -f -e trace=connect) and its CPU over the next 20 s (without strace).
#   bench/standby_idle.sh                 (GNOMON=path: another build to run)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${GNOMON:-build/gnomon}
case "$BIN" in /*) ;; *) BIN="$PWD/$BIN" ;; esac
command -v strace > /dev/null || { echo "strace is needed (apt-get install strace)"; exit 1; }
WORK=$(mktemp -d /tmp/gnomon-bench-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

build/gnomon-kafka-dev --topic fleet.ingress:8 --topic fleet.changelog:8 > "$WORK/cluster.out" & PIDS+=($!)
for _ in $(seq 50); do grep -q bootstrap "$WORK/cluster.out" && break; sleep 0.1; done
B=$(sed -n 's/bootstrap: //p' "$WORK/cluster.out")
for i in a b; do
  mkdir -p "$WORK/$i/rules"
  echo 'return rule { name = "none", from = "nothing/here", handle = function(msg, ctx) end }' \
    > "$WORK/$i/rules/none.lua"
  cat > "$WORK/$i/gnomon.yaml" <<YAML
workers: 2
data_dir: data
connections:
  bus: { type: kafka, brokers: "$B" }
cluster: { name: fleet, partitions: 8, instance_id: inst-$i, connection: bus, standby_replicas: 1 }
shadows: { sync: full }
rules: ["rules/*.lua"]
YAML
done
(cd "$WORK/a" && exec "$BIN" run -c gnomon.yaml 2> log) & PIDS+=($!)
sleep 3
(cd "$WORK/b" && exec "$BIN" run -c gnomon.yaml 2> log) & PIDS+=($!)
PB=$!
sleep 20  # (balanced, copies caught up)
timeout 20 strace -f -e trace=connect -p "$PB" -o "$WORK/strace.out" 2> /dev/null || true
HZ=$(getconf CLK_TCK)
c0=$(awk '{print $14+$15}' "/proc/$PB/stat")
sleep 20
c1=$(awk '{print $14+$15}' "/proc/$PB/stat")
echo "connect() calls in 20 s: $(grep -c 'connect(' "$WORK/strace.out" || true)"
python3 -c "print(f'CPU while idle: {($c1-$c0)/$HZ/20*100:.1f}%')"
