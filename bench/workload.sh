# SPDX-License-Identifier: Apache-2.0
# Sourced by the end-to-end benchmarks. bench_workload WORK N: writes into WORK a recording of N
# telemetry messages (~200 bytes, 10k devices), the quickstart's overheat rule, and the common part
# of a config (workers, file sinks for alerts and recorded publishes, rules) to WORK/base.yaml.
# SHADOWS=1: the quickstart's rule, which also reports every reading to the device's shadow,
# with the SQLite shadow store on. STATE=1: bench/rules/stateful.lua (ctx.state read and written
# per message and a 5-minute tumbling window per device), with the store on.
bench_workload() {
  local work=$1 n=$2
  build/gnomon-sim gen --devices 10000 --count "$n" > "$work/capture.jsonl"
  mkdir -p "$work/rules"
  if [ "${SHADOWS:-0}" = 1 ]; then
    cp examples/quickstart/rules/overheat.lua "$work/rules/"   # + ctx.shadow:report per message
  elif [ "${STATE:-0}" = 1 ]; then
    cp bench/rules/stateful.lua "$work/rules/"
  else
    cp bench/rules/overheat.lua "$work/rules/"
  fi
  cat > "$work/base.yaml" <<'YAML'
workers: 2
data_dir: data
sinks:
  - { name: alerts, type: file, path: alerts.jsonl }
  - { name: alerts-stream, type: file, path: alerts-stream.jsonl }   # Kafka in the quickstart
  - { name: commands, type: file, path: commands.jsonl }   # ctx.publish, recorded
publish: { sink: commands }
rules: ["rules/*.lua"]
YAML
  if [ "${SHADOWS:-0}" = 1 ]; then
    echo "shadows: { store: sqlite }" >> "$work/base.yaml"
  elif [ "${STATE:-0}" = 1 ]; then
    echo "shadows: {}" >> "$work/base.yaml"
  fi
}
