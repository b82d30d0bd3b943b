#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Takeover with and without a standby (issue 16), side by side in one run: N shadows of ~1.3 KB
# in {name}.changelog (P partitions) on the development cluster; instance A is given every
# partition and restores them, instance B joins and is given half; with standby_replicas: 1,
# B also follows A's half into a warm copy. Then A is killed with -9 and B's restore of A's
# partitions — from Kafka giving them to B (the failure detected) to them processing again —
# is read from B's log. Also, with the standby: B's CPU per change-log record (from its start
# to its copies caught up: its own restore and the standby reads, the same work), and its CPU
# while idle (rounds that find nothing new) against the same instance without standbys.
#   bench/cluster_takeover.sh [N]          (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "${1:-100000}" "${P:-32}" "${SYNC:-full}" <<'PY'
import json, os, re, shutil, signal, subprocess, sys, tempfile, time, urllib.request

N, P, SYNC = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ROOT = os.getcwd()
HZ = os.sysconf("SC_CLK_TCK")
procs = []

def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / HZ

def metric(port, series):
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except Exception:
        return None
    for line in body.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return None

def wait(pred, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise SystemExit(f"timed out: {what}")

def restored(log):
    out = []
    for line in open(log):
        if '"cluster partitions restored"' in line:
            out.append(json.loads(line))
    return out

def run(standby, work):
    os.makedirs(f"{work}/rules")
    open(f"{work}/rules/none.lua", "w").write(
        'return rule { name = "none", from = "nothing/here", handle = function(msg, ctx) end }\n')
    kafka = subprocess.Popen([f"{ROOT}/build/gnomon-kafka-dev", "--topic", f"fleet.ingress:{P}",
                              "--topic", f"fleet.changelog:{P}"], stdout=subprocess.PIPE, text=True)
    procs.append(kafka)
    bootstrap = wait(lambda: (re.match(r"bootstrap: (\S+)", kafka.stdout.readline() or "") or [None, None])[1],
                     10, "the development cluster")
    subprocess.run([f"{ROOT}/build/gnomon-kafka-bench", "changelog", bootstrap, "fleet.changelog", str(N)],
                   check=True, stdout=subprocess.DEVNULL)
    ports = {"a": 19480 + 2 * standby, "b": 19481 + 2 * standby}
    inst = {}
    for i in ("a", "b"):
        open(f"{work}/{i}.yaml", "w").write(f"""workers: 2
data_dir: data-{i}
connections:
  bus: {{ type: kafka, brokers: "{bootstrap}", properties: {{ session.timeout.ms: 6000, heartbeat.interval.ms: 500 }} }}
cluster: {{ name: fleet, partitions: {P}, instance_id: bench-{i}, connection: bus, standby_replicas: {standby} }}
shadows: {{ sync: {SYNC} }}
rules: ["rules/*.lua"]
metrics: {{ listen: "127.0.0.1:{ports[i]}" }}
""")
    def start(i):
        p = subprocess.Popen([f"{ROOT}/build/gnomon", "run", "-c", f"{i}.yaml"], cwd=work,
                             stdout=subprocess.DEVNULL, stderr=open(f"{work}/{i}.log", "w"))
        procs.append(p)
        inst[i] = p
    start("a")
    wait(lambda: metric(ports["a"], "gnomon_cluster_partitions_owned") == P, 300, "a owns every partition")
    start("b")
    wait(lambda: metric(ports["b"], "gnomon_cluster_partitions_owned") == P // 2 and
         metric(ports["a"], "gnomon_cluster_partitions_owned") == P // 2, 300, "a and b share them")
    out = {"standby_replicas": standby}
    if standby:
        # B's copies of A's half: caught up once the records read stop growing.
        last, since = -1, time.time()
        while time.time() - since < 3:
            v = metric(ports["b"], "gnomon_cluster_standby_records_total") or 0
            if v != last:
                last, since = v, time.time()
            time.sleep(0.2)
        out["standby_records"] = int(last)
        # B's CPU from its start: its own restore and its standby reads are the same work
        # (read, parse, write to the store), so per record over both.
        own = metric(ports["b"], 'gnomon_cluster_restored_total{what="records"}') or 0
        out["b_cpu_us_per_record"] = round(cpu_s(inst["b"].pid) / max(last + own, 1) * 1e6, 1)
    # Idle: 10 s with nothing new.
    c0, t0 = cpu_s(inst["b"].pid), time.time()
    time.sleep(10)
    out["idle_cpu_pct"] = round((cpu_s(inst["b"].pid) - c0) / (time.time() - t0) * 100, 2)
    before = len(restored(f"{work}/b.log"))
    killed = time.time()
    inst["a"].send_signal(signal.SIGKILL)
    inst["a"].wait()
    got = wait(lambda: restored(f"{work}/b.log")[before:] or None, 300, "b restores a's partitions")
    r = got[0]
    out.update({"takeover_ms": int(r["ms"]), "records": int(r["records"]), "shadows": int(r["shadows"]),
                "partitions": len(r["partitions"].split(",")), "from_standby": int(r["from_standby"]),
                "kill_to_processing_s": round(time.time() - killed, 1)})
    return out

work = tempfile.mkdtemp(prefix="gnomon-bench-")
try:
    results = [run(s, f"{work}/s{s}") for s in (0, 1)]
    for r in results:
        print(json.dumps(r))
    a, b = results
    print(f"takeover of {a['partitions']} partitions ({a['shadows']} shadows): "
          f"{a['takeover_ms']} ms without a standby, {b['takeover_ms']} ms with one "
          f"({b['records']} records of tail); B's CPU per record restored or read into a standby "
          f"copy: {b['b_cpu_us_per_record']} us; idle CPU {a['idle_cpu_pct']}% without, {b['idle_cpu_pct']}% with")
finally:
    for p in procs:
        try:
            p.kill()
        except Exception:
            pass
    shutil.rmtree(work, ignore_errors=True)
PY
