"""Fixtures shared by every test package: free ports, brokers, PostgreSQL, and a bytecode cache for
the Python processes tests start.

Integration fixtures never skip: when the shared Mosquitto (127.0.0.1:1883) or PostgreSQL
(127.0.0.1:5432) is unreachable the test fails, because CI counts a skipped integration test as a
failure. ``make test`` starts both before the suite (services.sh).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SHARED_MQTT_HOST = os.environ.get("LEUKONET_TEST_MQTT_HOST", "127.0.0.1")
SHARED_MQTT_PORT = int(os.environ.get("LEUKONET_TEST_MQTT_PORT", "1883"))
PG_ADMIN_URL = os.environ.get("LEUKONET_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session", autouse=True)
def child_bytecode_cache() -> Iterator[Path | None]:
    """A bytecode cache for the Python processes tests start (hub serve, ingest workers, agents,
    the trainer's job children, the demo's steps); yields its folder, None when not needed.

    With ``PYTHONDONTWRITEBYTECODE=1`` (CI, this machine) and a venv installed without ``.pyc``
    files, every child compiles each module it imports at each start: about 3 s of CPU for a hub
    worker, 11 s for the trainer's TensorFlow stack, against 1.2 s and 4 s from cached bytecode
    (2 cores). Children get ``PYTHONPYCACHEPREFIX`` pointing to a folder of this session (the
    first child to import a module writes it there, the later ones read it), deleted at the end.
    Nothing changes when bytecode can be written or the venv has it already.
    """
    compiled_venv = Path(importlib.util.cache_from_source(pytest.__file__)).exists()
    no_cache = bool(os.environ.get("PYTHONDONTWRITEBYTECODE")) and not os.environ.get("PYTHONPYCACHEPREFIX")
    if not no_cache or compiled_venv:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="leukonet-test-pycache-"))
    saved = os.environ.pop("PYTHONDONTWRITEBYTECODE")
    os.environ["PYTHONPYCACHEPREFIX"] = str(folder)
    try:
        yield folder
    finally:
        os.environ.pop("PYTHONPYCACHEPREFIX", None)
        os.environ["PYTHONDONTWRITEBYTECODE"] = saved
        shutil.rmtree(folder, ignore_errors=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll ``cond`` until it returns something truthy (returned); fail the test naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    value = cond()
    if value:
        return value
    pytest.fail(f"{what} not met within {timeout} s")


@contextmanager
def serve_in_thread(server: Any) -> Iterator[str]:
    """Run an HTTP server (stdlib or werkzeug, bound to 127.0.0.1) in a thread; yields its base URL."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def wait_port(host: str, port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@dataclass
class Broker:
    host: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    config_path: Path | None = None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def start(self) -> None:
        """(Re)start a private broker on the same port and config (persistence kept)."""
        assert self.config_path is not None, "only private brokers can be restarted"
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(self.config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if not wait_port(self.host, self.port, 10):
            raise RuntimeError(f"mosquitto did not start on port {self.port}")


def start_private_mosquitto(tmp: Path) -> Broker:
    """A mosquitto of our own on a free loopback port, with persistence in ``tmp``."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        pytest.fail(
            "mosquitto is not installed: run `make test` (services.sh installs it as root) "
            "or apt-get install -y mosquitto"
        )
    port = free_port()
    conf = tmp / "mosquitto.conf"
    # As root, mosquitto drops to the `mosquitto` user, which cannot write into pytest's 0700
    # tmp_path: persistence would silently do nothing and restarts would lose sessions.
    user = "user root\n" if hasattr(os, "geteuid") and os.geteuid() == 0 else ""
    conf.write_text(
        f"{user}listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {tmp}/\nmax_queued_messages 100000\nautosave_interval 1\n"
    )
    broker = Broker("127.0.0.1", port, config_path=conf)
    broker.start()
    return broker


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker a test may stop and restart without touching the shared one."""
    b = start_private_mosquitto(tmp_path)
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def shared_broker() -> Broker:
    """The real Mosquitto on 127.0.0.1:1883; fails (never skips) when it is down."""
    if not wait_port(SHARED_MQTT_HOST, SHARED_MQTT_PORT, 3):
        pytest.fail(
            f"Mosquitto is not reachable on {SHARED_MQTT_HOST}:{SHARED_MQTT_PORT}; "
            "start it: mosquitto -d -c /etc/mosquitto/mosquitto.conf"
        )
    return Broker(SHARED_MQTT_HOST, SHARED_MQTT_PORT)


@contextmanager
def postgres_database(template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database (empty, or a copy of the database ``template`` names, which must
    have no open connection), dropped afterwards; yields its URL. Fails (never skips) when
    PostgreSQL is unreachable."""
    import sqlalchemy  # the dev extra installs it; an ImportError here is a broken venv, not a skip

    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"leukonet_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"{copy}'))
    except sqlalchemy.exc.OperationalError as exc:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}; start it with "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        )
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(
                sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with postgres_database() as url:
        yield url


# Benchmarks measure, they do not assert speed: `make bench` runs them (LEUKONET_BENCH=1);
# `make test` does not collect them.
collect_ignore_glob = [] if os.environ.get("LEUKONET_BENCH") == "1" else ["benchmarks/*"]
