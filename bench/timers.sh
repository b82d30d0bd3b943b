#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Rule timers (issue 17), two figures:
#  1. memory: `gnomon replay` of N messages from N devices, each setting a timer an hour ahead
#     (N pending timers at the end); prints the peak RSS and the store's size.
#  2. firing: `gnomon run` on F messages from F devices whose timers come due at RATE per second
#     (the k-th at start + 3 s + k / RATE); on_timer records how late it ran (ctx.now() - due).
#     Prints firings/s and lateness p50 / p99 / max.
#   bench/timers.sh [N] [F] [RATE]     (defaults 1000000 200000 20000; needs build/gnomon)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
F=${2:-200000}
RATE=${3:-20000}
WORK=$(mktemp -d /tmp/gnomon-timers-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/rules"

# 1. Memory with N pending timers.
python3 - "$N" > "$WORK/capture.jsonl" <<'PY'
import sys
n = int(sys.argv[1])
out = sys.stdout
for i in range(n):
    out.write('{"topic":"devices/dev%07d/telemetry","ts":%d,"payload":{"temp":20}}\n' % (i, 1700000000000 + i))
PY
cat > "$WORK/rules/later.lua" <<'LUA'
return rule { name = "later", from = "devices/+/telemetry",
  handle = function(msg, ctx) ctx.timer.after("check", "1h", { t = msg.payload.temp }) end,
  on_timer = function(t, ctx) end }
LUA
cat > "$WORK/gnomon.yaml" <<'YAML'
workers: 2
data_dir: data
sinks: [{ name: out, type: file, path: out.jsonl }]
shadows: {}
rules: ["rules/*.lua"]
YAML
(cd "$WORK" && /usr/bin/time -f "peak RSS %M KB, %e s wall, %U s user, %S s sys" \
   "$OLDPWD/build/gnomon" replay -c gnomon.yaml --input capture.jsonl 2>&1 | grep -E "replayed|peak")
echo "store: $(du -sh "$WORK/data" | cut -f1) for $N pending timers"
rm -rf "$WORK/data" "$WORK/capture.jsonl"

# 2. Firing rate and lateness.
START=$(( $(date +%s%3N) + 3000 ))
python3 - "$F" "$START" "$RATE" > "$WORK/capture.jsonl" <<'PY'
import sys
f, start, rate = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out = sys.stdout
for k in range(f):
    out.write('{"topic":"devices/dev%07d/telemetry","payload":{"due":%d}}\n' % (k, start + k * 1000 // rate))
PY
cat > "$WORK/rules/later.lua" <<'LUA'
return rule { name = "later", from = "devices/+/telemetry",
  handle = function(msg, ctx) ctx.timer.at("check", msg.payload.due) end,
  on_timer = function(t, ctx) ctx.emit("out", { late = ctx.now() - t.due }) end }
LUA
cat > "$WORK/gnomon.yaml" <<'YAML'
workers: 2
data_dir: data
sources: [{ name: rec, type: file, path: capture.jsonl }]
sinks: [{ name: out, type: file, path: out.jsonl }]
shadows: {}
rules: ["rules/*.lua"]
metrics: { listen: "127.0.0.1:0" }
YAML
(cd "$WORK" && exec "$OLDPWD/build/gnomon" run -c gnomon.yaml > run.log 2>&1) &
PID=$!
END=$(( START + F * 1000 / RATE + 20000 ))
while [ "$(wc -l < "$WORK/out.jsonl" 2>/dev/null || echo 0)" -lt "$F" ] && [ "$(date +%s%3N)" -lt "$END" ]; do
  sleep 0.2
done
kill "$PID"; wait "$PID" || true
python3 - "$WORK/out.jsonl" "$F" "$RATE" <<'PY'
import json, sys
lates = sorted(json.loads(l)["late"] for l in open(sys.argv[1]))
f, rate = int(sys.argv[2]), int(sys.argv[3])
if len(lates) < f:
    print("only %d of %d timers fired" % (len(lates), f)); sys.exit(1)
p = lambda q: lates[min(len(lates) - 1, int(q * len(lates)))]
print("fired %d timers due at %d/s: late p50 %d ms, p99 %d ms, max %d ms" % (len(lates), rate, p(0.5), p(0.99), lates[-1]))
PY
