#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Makes what examples/secure needs, in DIR (default: certs/ next to this script):
#   ca.pem, ca.key          a throwaway certificate authority (2 days)
#   broker.pem, broker.key  mosquitto's certificate (localhost, 127.0.0.1)
#   api.pem, api.key        gnomon's API certificate (localhost, 127.0.0.1)
#   passwords               mosquitto's password file: gnomon, lock-1, lock-2
#   secrets.env             the passwords and API tokens, for `set -a; . certs/secrets.env`
# Never use these in production: make your certificates with your own CA and keep the secrets
# in your secret store.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/certs}
mkdir -p "$dir"
cd "$dir"
umask 077

secret() { openssl rand -hex 16; }
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=gnomon example CA" \
  -keyout ca.key -out ca.pem 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.cnf
for name in broker api; do
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$name.key" \
    -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile san.cnf -out "$name.pem" 2>/dev/null
  rm -f "$name.csr"
done

mqtt_gnomon=$(secret) lock1=$(secret) lock2=$(secret)
rm -f passwords
touch passwords
mosquitto_passwd -b passwords gnomon "$mqtt_gnomon"
mosquitto_passwd -b passwords lock-1 "$lock1"
mosquitto_passwd -b passwords lock-2 "$lock2"
cat > secrets.env <<ENV
GNOMON_MQTT_PASSWORD=$mqtt_gnomon
LOCK1_PASSWORD=$lock1
LOCK2_PASSWORD=$lock2
GNOMON_API_ADMIN_TOKEN=$(secret)
GNOMON_API_DEVICE_APP_TOKEN=$(secret)
ENV

# Certificates are public; keys and secrets are not. mosquitto drops to its own user when
# started as root: give its group what it must read.
chmod 644 ca.pem broker.pem api.pem
if getent group mosquitto >/dev/null; then
  chgrp mosquitto . broker.key passwords
  chmod 750 .
  chmod 640 broker.key passwords
fi
echo "wrote $dir"
