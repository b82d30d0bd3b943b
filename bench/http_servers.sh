#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# cpp-httplib vs Boost.Beast, each serving the same ~500-byte shadow document on GET with
# keep-alive (build/gnomon-http-bench; needs libboost-dev), driven by wrk on the same machine.
#   bench/http_servers.sh [CONNECTIONS] [SECONDS] [SERVER_THREADS]   (default 8 5 2)
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-8}
D=${2:-5}
T=${3:-2}
PORT=${PORT:-19490}
for server in httplib beast; do
  threads=$T
  # cpp-httplib serves one connection per pool thread: give it at least one per connection.
  if [ "$server" = httplib ] && [ "$threads" -lt "$C" ]; then threads=$C; fi
  build/gnomon-http-bench "$server" "$PORT" "$threads" & pid=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/v1/things/bench/shadow" >/dev/null && break; sleep 0.1; done
  echo "== $server ($threads threads), wrk -t2 -c$C -d${D}s"
  wrk -t2 -c"$C" -d"${D}s" --latency "http://127.0.0.1:$PORT/v1/things/bench/shadow" |
    grep -E "Requests/sec|^ +(50|99)%"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
