# SPDX-License-Identifier: Apache-2.0
# Sourced by the end-to-end benchmarks. bench_workload WORK N: writes into WORK a recording of N
# telemetry messages (~200 bytes, 10k devices), the quickstart's overheat rule, and the common part
# of a config (workers, file sinks for alerts and recorded publishes, rules) to WORK/base.yaml.
bench_workload() {
  local work=$1 n=$2
  build/gnomon-sim gen --devices 10000 --count "$n" > "$work/capture.jsonl"
  mkdir -p "$work/rules"
  cp examples/quickstart/rules/overheat.lua "$work/rules/"
  cat > "$work/base.yaml" <<'YAML'
workers: 2
data_dir: data
sinks:
  - { name: alerts, type: file, path: alerts.jsonl }
  - { name: commands, type: file, path: commands.jsonl }   # ctx.publish, recorded
publish: { sink: commands }
rules: ["rules/*.lua"]
YAML
}
