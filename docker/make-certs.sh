#!/bin/sh
# Make the TLS files of the compose broker (docker/mosquitto.conf, listener 8883):
#   docker/make-certs.sh [OUT_DIR] [HOST ...]
# OUT_DIR defaults to docker/certs (compose.yaml mounts it read-only into the broker). The server
# certificate names every HOST as a subject alternative name, plus `mosquitto` (the compose service
# name, which the compose agents connect to) and localhost / 127.0.0.1; pass the names your lab
# machines use to reach the broker, e.g.
#   docker/make-certs.sh docker/certs broker.hospital.example 10.20.0.5
# Writes: ca.crt (give a copy to every agent: mqtt.ca_file), ca.key (keep it safe, off the broker if
# you can), server.crt, server.key. The CA is made once and reused, so running the script again (new
# host names, more clients) keeps every agent's ca.crt valid. Optional client certificates for a
# broker with `require_certificate true`: CLIENTS="lab-a-scope-1 lab-b-scope-1" docker/make-certs.sh
# writes clients/<name>.crt and .key (the agent's mqtt.cert_file / mqtt.key_file).
# The folder gets a .gitignore of its own: private keys never go into the repository.
set -eu
umask 077

out=${1:-$(dirname "$0")/certs}
if [ "$#" -gt 0 ]; then shift; fi
days=${DAYS:-825}  # the longest validity clients accept for a server certificate
mkdir -p "$out"
printf '*\n' >"$out/.gitignore"

san="DNS:mosquitto,DNS:localhost,IP:127.0.0.1"
for host in "$@"; do
  case "$host" in
    *[!0-9.]*) san="$san,DNS:$host" ;;  # anything but digits and dots is a host name
    *) san="$san,IP:$host" ;;
  esac
done
first=${1:-mosquitto}

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -f "$out/ca.key" ]; then
  newkey "$out/ca.key"
  openssl req -x509 -new -key "$out/ca.key" -sha256 -days 3650 -subj "/CN=leukonet broker CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$out/ca.crt"
fi

# issue NAME CN EXTENSIONS: NAME.key (new) and NAME.crt signed by the CA
issue() {
  newkey "$out/$1.key"
  openssl req -new -key "$out/$1.key" -subj "/CN=$2" -out "$out/$1.csr"
  printf '%s\n' "$3" | tr ';' '\n' >"$out/$1.ext"
  openssl x509 -req -in "$out/$1.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -days "$days" -sha256 -extfile "$out/$1.ext" -out "$out/$1.crt" 2>/dev/null
  rm -f "$out/$1.csr" "$out/$1.ext"
}

base="basicConstraints=CA:FALSE;keyUsage=critical,digitalSignature,keyEncipherment"
issue server "$first" "$base;extendedKeyUsage=serverAuth;subjectAltName=$san"
for name in ${CLIENTS:-}; do
  mkdir -p "$out/clients"
  issue "clients/$name" "$name" "$base;extendedKeyUsage=clientAuth"
done
chmod 644 "$out/ca.crt" "$out/server.crt"
echo "make-certs: $out/server.crt for $san, signed by $out/ca.crt${CLIENTS:+; client certificates in $out/clients}"
