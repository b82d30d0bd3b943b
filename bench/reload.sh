#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Hot reload under load: `gnomon run` reads N recorded messages through the overheat rule while
# the rules are reloaded R times over the API. Prints the time to switch (compile + test on the
# reload, and each worker's pause to load the new set) and the run's throughput.
#   bench/reload.sh [N] [R]     (default 1000000 5)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
R=${2:-5}
PORT=${PORT:-18940}
WORK=$(mktemp -d /tmp/gnomon-bench-XXXXXX)
trap 'kill $GP 2>/dev/null || true; rm -rf "$WORK"' EXIT
source bench/workload.sh
bench_workload "$WORK" "$N"
{ cat "$WORK/base.yaml"; cat <<YAML
sources: [{ name: rec, type: file, path: capture.jsonl }]
watch_rules: false
log: { level: warn }
api: { listen: "127.0.0.1:$PORT" }
metrics: { listen: "127.0.0.1:$PORT" }
YAML
} > "$WORK/gnomon.yaml"
START=$(date +%s.%N)
build/gnomon run -c "$WORK/gnomon.yaml" 2>"$WORK/log" & GP=$!
until curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null; do sleep 0.02; done
for i in $(seq "$R"); do
  sleep 0.3
  T0=$(date +%s.%N)
  curl -sf -X POST -d '' "http://127.0.0.1:$PORT/v1/rules/reload" >/dev/null
  echo "reload $i: $(python3 -c "print(f'{($(date +%s.%N) - $T0) * 1000:.1f}')") ms (compile + tests + swap)"
done
until curl -s "http://127.0.0.1:$PORT/metrics" | grep -q "^gnomon_messages_done_total $N$"; do sleep 0.02; done
END=$(date +%s.%N)
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^gnomon_rule_switch_seconds_(sum|count)|^gnomon_rule_reloads_total|^gnomon_messages_in_flight'
python3 -c "print(f'{$N} messages in {$END - $START:.2f} s = {$N / ($END - $START):.0f}/s with $R reloads')"
