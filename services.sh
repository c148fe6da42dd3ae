#!/usr/bin/env bash
# The services leukonet's test suite needs, made present: `./services.sh test` (run by `make test`
# and so by .ci/run) makes sure Mosquitto answers on 127.0.0.1:1883, PostgreSQL on 127.0.0.1:5432
# with loopback trust for the `postgres` user, and headless Chromium is installed.
# `./services.sh demo` (run by `make demo`) only makes sure the mosquitto binary and its dynamic
# security plugin are installed: the demo's hub starts a broker of its own on loopback (SQLite, no
# system broker needed), with a login per agent.
#
# As root it installs (Debian packages) and starts what is missing. Without root it changes
# nothing: it stops at once and prints the exact commands to run.
set -euo pipefail

log() { printf '[services] %s\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done; return 1; }
is_root() { [ "$(id -u)" = 0 ]; }

# Without root, collect what a root user would have to do, and print it all at the end.
todo=()
need() { todo+=("$*"); }

apt_updated=0
apt_install() {
  [ "$apt_updated" = 1 ] || { DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

have_mosquitto() { command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; }
have_dynsec_plugin() {
  local f
  for f in /usr/lib/*/mosquitto_dynamic_security.so /usr/lib/mosquitto_dynamic_security.so \
    /usr/local/lib/mosquitto_dynamic_security.so; do
    [ -f "$f" ] && return 0
  done
  return 1
}
mosquitto_version() { "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -h 2>/dev/null | awk 'NR==1 {print $3}'; }
pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -1; }
psql_ok() { psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; }
start_mosquitto_cmd() {
  if [ -f /etc/mosquitto/mosquitto.conf ]; then echo "/usr/sbin/mosquitto -d -c /etc/mosquitto/mosquitto.conf";
  else echo "/usr/sbin/mosquitto -d -p 1883"; fi
}

ensure_mosquitto() {
  port_open 1883 && { log "mosquitto up on 127.0.0.1:1883"; return; }
  if ! is_root; then
    have_mosquitto || need "apt-get install -y mosquitto"
    need "$(start_mosquitto_cmd)"
    return
  fi
  have_mosquitto || { log "installing mosquitto"; apt_install mosquitto; }
  log "starting mosquitto"
  mkdir -p /run/mosquitto && chown mosquitto: /run/mosquitto 2>/dev/null || true
  $(start_mosquitto_cmd)
  wait_port 1883 || { log "FAIL: Mosquitto is not reachable on 127.0.0.1:1883"; exit 1; }
  log "mosquitto up on 127.0.0.1:1883"
}

# The demo's hub runs mosquitto itself (hub/broker/embedded.py): the binary and the plugin are enough.
ensure_mosquitto_binary() {
  if have_mosquitto && have_dynsec_plugin; then log "mosquitto $(mosquitto_version) with dynamic security"; return; fi
  if ! is_root; then need "apt-get install -y mosquitto"; return; fi
  log "installing mosquitto (the demo hub starts it on loopback; the system broker is not needed)"
  apt_install mosquitto
  # Debian starts the system broker on install where systemd runs; the demo does not use it
  have_dynsec_plugin || { log "FAIL: mosquitto has no mosquitto_dynamic_security.so (Mosquitto >= 2.0 needed)"; exit 1; }
  log "mosquitto $(mosquitto_version) with dynamic security"
}

ensure_postgres() {
  if ! port_open 5432; then
    if ! is_root; then
      command -v pg_ctlcluster >/dev/null || need "apt-get install -y postgresql"
      need "pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql | sort -V | tail -1) main start"
      need "# then allow loopback trust for the test user: add 'host all all 127.0.0.1/32 trust' at the top of pg_hba.conf and reload"
      return
    fi
    command -v pg_ctlcluster >/dev/null || { log "installing postgresql"; apt_install postgresql; }
    log "starting postgresql"
    pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main start || true
    wait_port 5432 || { log "FAIL: PostgreSQL is not reachable on 127.0.0.1:5432"; exit 1; }
  fi
  command -v psql >/dev/null || { is_root && apt_install postgresql-client || need "apt-get install -y postgresql-client"; }
  if command -v psql >/dev/null && ! psql_ok; then
    # A fresh Debian install has peer/md5 auth: allow loopback trust for the test user, as CI does.
    hba="$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | head -1)"
    if ! is_root; then
      need "sed -i '1i host all all 127.0.0.1/32 trust\\nhost all all ::1/128 trust' ${hba:-/etc/postgresql/*/main/pg_hba.conf}"
      need "pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql | sort -V | tail -1) main reload"
      return
    fi
    log "configuring loopback trust auth in $hba"
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main reload
    for _ in $(seq 1 20); do psql_ok && break; sleep 0.5; done
  fi
  if is_root || psql_ok; then
    psql_ok || { log "FAIL: cannot log in to PostgreSQL on 127.0.0.1:5432 as postgres"; exit 1; }
    log "postgresql up on 127.0.0.1:5432"
  fi
}

ensure_chromium() {
  command -v chromium >/dev/null && { log "chromium $(chromium --version 2>/dev/null | awk '{print $2}')"; return; }
  if ! is_root; then need "apt-get install -y chromium"; return; fi
  log "installing chromium (headless, for the dashboard browser tests)"
  apt_install chromium
}

target="${1:-}"
case "$target" in
  test)
    ensure_mosquitto
    ensure_postgres
    ensure_chromium
    what="the test suite needs services"
    ;;
  demo)
    ensure_mosquitto_binary
    what="the demo needs Mosquitto (with its dynamic security plugin)"
    ;;
  *)
    {
      echo "usage: $0 test   (make sure Mosquitto, PostgreSQL and Chromium are there for make test)"
      echo "       $0 demo   (make sure the mosquitto binary is installed for make demo)"
    } >&2
    exit 2
    ;;
esac

if [ "${#todo[@]}" -gt 0 ]; then
  {
    echo "[services] $what this user cannot install or start. As root, run:"
    for cmd in "${todo[@]}"; do echo "    $cmd"; done
    echo "[services] or run 'sudo ./services.sh $target', which does all of it, then 'make $target' again."
  } >&2
  exit 1
fi
