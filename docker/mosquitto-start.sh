#!/bin/sh
# Start the compose broker (docker/compose.yaml runs this as root in eclipse-mosquitto:2, then
# Mosquitto drops to the `mosquitto` user):
#  1. copy the TLS files made by docker/make-certs.sh from their read-only mount to a place only
#     the `mosquitto` user can read (Mosquitto 2.0 loads them after dropping privileges, and the
#     key should not have to be world-readable on the host);
#  2. on the very first start, create the dynamic security file with the hub's admin login
#     (leukonet-hub, password from MOSQUITTO_HUB_PASSWORD, which compose fills from
#     LEUKONET_HUB_MQTT__PASSWORD in docker/.env). The password goes to mosquitto_ctrl on stdin,
#     never on a command line. Later starts keep the file: to change the hub's password then, run
#     mosquitto_ctrl -h <broker> -u leukonet-hub dynsec setClientPassword leukonet-hub
#     and update docker/.env to match;
#  3. run mosquitto in the foreground without the password in its environment.
# The paths can be overridden (tests/test_docker.py runs this script outside a container).
set -eu
umask 077  # what this script and the broker write (keys, password hashes, the session store) stays private

conf=${MOSQUITTO_CONF:-/mosquitto/config/mosquitto.conf}
data=${MOSQUITTO_DATA:-/mosquitto/data}
certs_in=${MOSQUITTO_CERTS_IN:-/run/leukonet-certs}
certs=${MOSQUITTO_CERTS:-/mosquitto/certs}
owner=${MOSQUITTO_OWNER:-mosquitto}
dynsec="$data/dynamic-security.json"

for f in ca.crt server.crt server.key; do
  if [ ! -f "$certs_in/$f" ]; then
    echo "mosquitto-start: $certs_in/$f is missing: run docker/make-certs.sh first" >&2
    exit 1
  fi
done
mkdir -p "$certs" "$data"
cp "$certs_in/ca.crt" "$certs_in/server.crt" "$certs_in/server.key" "$certs/"
chown "$owner" "$certs" "$certs/ca.crt" "$certs/server.crt" "$certs/server.key" "$data"

if [ ! -f "$dynsec" ]; then
  password=${MOSQUITTO_HUB_PASSWORD:-}
  case "$password" in
    "" | change-me*)
      echo "mosquitto-start: set LEUKONET_HUB_MQTT__PASSWORD in docker/.env to a random value" \
        "(python -c 'import secrets; print(secrets.token_urlsafe(32))') before the first start" >&2
      exit 1
      ;;
  esac
  printf '%s\n%s\n' "$password" "$password" | mosquitto_ctrl dynsec init "$dynsec" leukonet-hub >/dev/null
  chown "$owner" "$dynsec"
  echo "mosquitto-start: created $dynsec with the hub's admin login leukonet-hub"
fi

unset MOSQUITTO_HUB_PASSWORD
exec mosquitto -c "$conf"
