#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# REST GET of a shadow with keep-alive (wrk), against the real gnomon binary (no broker needed:
# shadows with the REST API only). Also POST updates. Needs wrk (apt-get install wrk).
#   bench/shadow_rest.sh [SECONDS] [CONNECTIONS]      (default 10, 32)
#   GNOMON=path/to/gnomon   another build (to compare two side by side)
#   TLS=1                   the API over TLS (a throwaway self-signed certificate)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
CONNS=${2:-32}
PORT=${PORT:-18088}
WORK=$(mktemp -d /tmp/gnomon-bench-XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
GNOMON=${GNOMON:-build/gnomon}
SCHEME=http
TLS_LINE=""
if [ "${TLS:-0}" = 1 ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
  SCHEME=https
  TLS_LINE=", tls: { cert: $WORK/cert.pem, key: $WORK/key.pem }"
fi
cat > "$WORK/gnomon.yaml" <<YAML
workers: 2
data_dir: data
shadows: {}
api: { listen: "127.0.0.1:$PORT"$TLS_LINE }
log: { level: warn }
YAML
"$GNOMON" run -c "$WORK/gnomon.yaml" 2>"$WORK/gnomon.log" & PIDS+=($!)
for _ in $(seq 100); do curl -skf "$SCHEME://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.05; done
# ~500 bytes of state
curl -skf -X POST "$SCHEME://127.0.0.1:$PORT/v1/things/bench-1/shadow" -d '{"state":{"reported":{"temp":21.5,"humidity":40,"fw":"1.2.0","mode":"heat","fan":"auto","battery":88,"rssi":-61,"led":{"r":255,"g":0,"b":0},"schedule":[6,22],"room":"kitchen","uptime":123456,"errors":0},"desired":{"mode":"heat","targetTemp":21.0,"led":{"r":255,"g":0,"b":0},"fan":"auto"}}}' >/dev/null
echo "GET /v1/things/bench-1/shadow, $CONNS connections, ${SECS}s:"
wrk -t 2 -c "$CONNS" -d "${SECS}s" --latency "$SCHEME://127.0.0.1:$PORT/v1/things/bench-1/shadow" | grep -E "Requests/sec|Latency|99%|50%"
cat > "$WORK/post.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/v1/things/bench-" .. (n % 1000) .. "/shadow",
    { ["Content-Type"] = "application/json" },
    '{"state":{"reported":{"temp":' .. (n % 40) .. '.5,"uptime":' .. n .. '}}}')
end
LUA
echo "POST updates over 1000 shadows (durable before the 200), $CONNS connections, ${SECS}s:"
wrk -t 2 -c "$CONNS" -d "${SECS}s" --latency -s "$WORK/post.lua" "$SCHEME://127.0.0.1:$PORT" | grep -E "Requests/sec|Latency|99%|50%|Non-2xx"
