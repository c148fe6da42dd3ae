"""Benchmark: a staged rollout (10% -> 50% -> 100%) to 500 simulated agents.

The hub runs as a child process (``leukonet hub serve``) on PostgreSQL and a private Mosquitto.
500 real MQTT clients (driven by 4 poll threads) receive their retained desired state, download
the bundle over HTTP with the agent token (8 download threads), check its sha256 and report
``downloading`` + ``activated`` and a new status. Printed (``make bench``)::

    BENCH rollout_500_agents_s <seconds from POST /rollouts to every target succeeded> s
    BENCH rollout_hub_cpu_s <user + system CPU seconds of the hub process over that time> s

It measures and fails only when the rollout does not complete within the bound; no speed assert.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from shared.logs import Progress
from tests.conftest import free_port, wait_port, wait_until
from tests.hub.conftest import TOKENS, build_test_bundle, make_keys
from tests.hub.simfleet import SimFleet

pytestmark = pytest.mark.bench
log = logging.getLogger(__name__)

AGENTS = int(os.environ.get("LEUKONET_BENCH_AGENTS", "500"))
BUNDLE_BYTES = 1024 * 1024  # 1 MiB of incompressible "weights": 500 downloads = 0.5 GB over loopback
ROLLOUT_BOUND_S = 300.0
ROOT = Path(__file__).resolve().parents[2]


def test_rollout_to_500_agents(tmp_path, private_broker, postgres_url):
    keys = make_keys(tmp_path / "keys")
    port = free_port()
    hub_url = f"http://127.0.0.1:{port}"
    run = uuid.uuid4().hex[:6]
    config = {
        "data_dir": str(tmp_path / "hub"),
        "database_url": postgres_url,
        "public_url": hub_url,
        "port": port,
        "secret_key": "bench-secret-key-not-for-production",
        "tokens": [{"name": f"bench-{role}", "token": tok, "role": role} for role, tok in TOKENS.items()],
        "trusted_keys": [str(keys.public)],
        "mqtt": {"host": "127.0.0.1", "port": private_broker.port, "client_id": f"hub-bench-{run}"},
        "ingest": {"batch_size": 500, "batch_ms": 50},
        "rollouts": {"tick_s": 1.0},
        "log_level": "WARNING",
    }
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(config))
    hub_log = (tmp_path / "hub.log").open("wb")
    hub = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "hub", "serve", "--config", str(tmp_path / "hub.yaml")],
        stdout=hub_log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    fleet = SimFleet(
        "127.0.0.1", private_broker.port, TOKENS["agent"], loop_threads=4, http_workers=8, prefix="bench"
    )
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {TOKENS['admin']}"
    try:
        assert wait_port("127.0.0.1", port, 60), (tmp_path / "hub.log").read_text()
        for version in ("1.0.0", "2.0.0"):
            bundle = build_test_bundle(
                tmp_path / f"leuko-{version}.zip", keys, version=version, pb_bytes=BUNDLE_BYTES
            )
            with bundle.open("rb") as fh:
                r = api.post(f"{hub_url}/api/v1/models", files={"bundle": (bundle.name, fh)}, timeout=60)
            assert r.status_code == 201, r.text
        fleet.add(AGENTS, lab=f"bench-{run}")
        fleet.connect()

        def known() -> bool:
            items = api.get(f"{hub_url}/api/v1/agents", timeout=30).json()["items"]
            return sum(1 for a in items if a["lab"] == f"bench-{run}" and a["state"] == "online") == AGENTS

        wait_until(known, 120, 0.5, f"{AGENTS} agents online at the hub")

        proc = psutil.Process(hub.pid)
        cpu0 = proc.cpu_times()
        t0 = time.monotonic()
        r = api.post(
            f"{hub_url}/api/v1/rollouts",
            json={
                "model_name": "leuko",
                "model_version": "2.0.0",
                "target": {"labs": [f"bench-{run}"]},
                "stages": [10, 50, 100],
                "success_threshold": 0.9,
                "error_threshold": 0.05,
                "timeout_s": 120,
            },
            timeout=60,
        )
        assert r.status_code == 201, r.text
        rollout_id = r.json()["rollout_id"]
        done = 0
        with Progress(AGENTS, "rollout", log, unit="agents") as bar:
            deadline = time.monotonic() + ROLLOUT_BOUND_S
            while True:
                body = api.get(f"{hub_url}/api/v1/rollouts?state=", timeout=30).json()["items"][0]
                assert body["rollout_id"] == rollout_id
                succeeded = body["totals"]["succeeded"]
                if succeeded > done:
                    bar.update(succeeded - done, stage=body["current_stage"])
                    done = succeeded
                if body["state"] != "running":
                    break
                assert time.monotonic() < deadline, f"rollout not done within {ROLLOUT_BOUND_S} s: {body}"
                time.sleep(0.2)
        elapsed = time.monotonic() - t0
        cpu1 = proc.cpu_times()
        assert body["state"] == "completed" and succeeded == AGENTS, body
        assert all(a.model_version == "2.0.0" for a in fleet.agents.values())
        hub_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        print(f"\nbench: {AGENTS} agents, bundle {BUNDLE_BYTES} B, {fleet.downloads} downloads, 10/50/100")
        print(f"BENCH rollout_{AGENTS}_agents_s {elapsed:.2f} s")
        print(f"BENCH rollout_hub_cpu_s {hub_cpu:.2f} s")
    finally:
        fleet.close()
        hub.send_signal(signal.SIGTERM)
        try:
            hub.wait(timeout=30)
        except subprocess.TimeoutExpired:
            hub.kill()
            hub.wait(timeout=10)
        hub_log.close()
