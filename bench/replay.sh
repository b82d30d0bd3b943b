#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# End to end: `gnomon replay` of N telemetry messages (~200 bytes, 10k devices) through the
# quickstart's overheat rule to a file sink, with 2 workers. Prints messages/s.
#   bench/replay.sh [N]        (default 1000000; needs build/gnomon and build/gnomon-sim)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
WORK=$(mktemp -d /tmp/gnomon-bench-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
source bench/workload.sh
bench_workload "$WORK" "$N"
cp "$WORK/base.yaml" "$WORK/gnomon.yaml"
echo "input: $N messages, $(( $(stat -c %s "$WORK/capture.jsonl") / N )) bytes/line avg"
OUT=$(${GNOMON_WRAP:-} build/gnomon replay -c "$WORK/gnomon.yaml" --input "$WORK/capture.jsonl" 2>&1)
echo "$OUT" | grep replayed || { echo "$OUT" | tail -20; exit 1; }
# A benchmark that dead-letters its input measures the wrong thing: refuse the figure.
echo "$OUT" | grep -q "replayed.* 0 dead-lettered" || { echo "messages were dead-lettered: the figure is void"; exit 1; }
echo "alerts: $(wc -l < "$WORK/alerts.jsonl"), commands: $(wc -l < "$WORK/commands.jsonl")"
