#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Holds N idle keep-alive connections (default 10,000) open on gnomon's API listener, then
# reports gnomon's RSS before and after and how long /healthz and a shadow GET take meanwhile.
#   bench/idle_connections.sh [N]
#   GNOMON=path/to/gnomon   another build (to compare two side by side)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
PORT=${PORT:-18089}
GNOMON=${GNOMON:-build/gnomon}
WORK=$(mktemp -d /tmp/gnomon-bench-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"
cat > "$WORK/gnomon.yaml" <<YAML
workers: 2
data_dir: data
shadows: {}
api: { listen: "127.0.0.1:$PORT", limits: { max_connections: $((N + 1000)), idle_timeout_ms: 600000 } }
log: { level: warn }
YAML
if ! "$GNOMON" check -c "$WORK/gnomon.yaml" >/dev/null 2>&1; then
  # A build without api.limits (before the Beast server).
  sed -i "s/, limits: {[^}]*}//" "$WORK/gnomon.yaml"
fi
"$GNOMON" run -c "$WORK/gnomon.yaml" 2>"$WORK/gnomon.log" & GPID=$!; PIDS+=($GPID)
for _ in $(seq 400); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.05; done
curl -sf -X POST "http://127.0.0.1:$PORT/v1/things/idle-1/shadow" -d '{"state":{"reported":{"on":true}}}' >/dev/null
rss() { awk '/VmRSS/ {print $2}' "/proc/$GPID/status"; }
before=$(rss)
# The holder: opens N connections, sends one keep-alive request on each (so every connection is
# a served, idle keep-alive connection, not one waiting in the accept queue), then waits.
python3 - "$PORT" "$N" "$WORK/ready" <<'PY' & PIDS+=($!)
import socket, sys, time, resource
port, n, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks, served = [], 0
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        served += s.recv(4096).startswith(b"HTTP/1.1 200")
    except OSError:
        pass
    socks.append(s)
open(ready, "w").write(str(served))
time.sleep(3600)
PY
for _ in $(seq 1200); do [ -f "$WORK/ready" ] && break; sleep 0.1; done
served=$(cat "$WORK/ready" 2>/dev/null || echo "?")
sleep 1
after=$(rss)
echo "$N connections opened, $served served a keep-alive request and stay open"
echo "gnomon RSS: ${before} KiB before, ${after} KiB with them open (+$(( (after - before) / 1024 )) MiB)"
for path in /healthz /v1/things/idle-1/shadow; do
  times=()
  for _ in 1 2 3 4 5; do
    times+=("$(curl -s -o /dev/null -m 5 -w '%{http_code}:%{time_total}' "http://127.0.0.1:$PORT$path" || true)")
  done
  echo "GET $path meanwhile (status:seconds): ${times[*]}"
done
