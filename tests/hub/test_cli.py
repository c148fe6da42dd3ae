"""``leukonet hub`` commands and the operator CLI (``leukonet models|agents``) against a live hub."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from hub.cli import cli as hub_cli
from hub.db.migrate import head_revision
from hub.operator.agents import agents as agents_cli
from hub.operator.models import models as models_cli
from tests.conftest import free_port, wait_port, wait_until
from tests.hub.conftest import TOKENS, serve_app


def write_config(path: Path, tmp_path: Path, **extra) -> Path:
    cfg = {
        "data_dir": str(tmp_path / "hubdata"),
        "secret_key": "cli-test-secret-key-not-for-production",
        "tokens": [{"name": "adm", "token": TOKENS["admin"], "role": "admin"}],
        "mqtt": {"host": "127.0.0.1", "port": free_port()},
        **extra,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_bad_config_exits_nonzero_with_the_error(runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prot: 8080\ntokens:\n  - {name: a, token: short, role: admin}\n")
    for command in ("check", "migrate", "serve", "ingest"):
        r = runner.invoke(hub_cli, [command, "--config", str(bad)])
        assert r.exit_code == 1, (command, r.output)
        assert "prot: unknown field" in r.output
        assert "at least 16 characters" in r.output


def test_serve_requires_secret_key(runner, tmp_path):
    path = write_config(tmp_path / "hub.yaml", tmp_path)
    data = yaml.safe_load(path.read_text())
    del data["secret_key"]
    path.write_text(yaml.safe_dump(data))
    r = runner.invoke(hub_cli, ["serve", "--config", str(path)])
    assert r.exit_code == 1 and "secret_key" in r.output


def test_migrate_then_check(runner, tmp_path, private_broker):
    path = write_config(
        tmp_path / "hub.yaml", tmp_path, mqtt={"host": "127.0.0.1", "port": private_broker.port}
    )
    r = runner.invoke(hub_cli, ["check", "--config", str(path)])
    assert r.exit_code == 0, r.output
    assert "revision none" in r.output and "run `leukonet hub migrate`" in r.output
    head = head_revision()
    r = runner.invoke(hub_cli, ["migrate", "--config", str(path)])
    assert r.exit_code == 0 and f"revision {head}" in r.output
    r = runner.invoke(hub_cli, ["check", "--config", str(path)])
    assert r.exit_code == 0 and f"revision {head} (head {head})" in r.output
    private_broker.stop()
    r = runner.invoke(hub_cli, ["check", "--config", str(path)])
    assert r.exit_code == 1 and "FAIL  broker" in r.output


def test_serve_runs_embedded_broker_ingest_and_web_then_stops_on_sigterm(tmp_path):
    port, broker_port = free_port(), free_port()
    path = write_config(
        tmp_path / "hub.yaml",
        tmp_path,
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        mqtt={"host": "127.0.0.1", "port": broker_port, "client_id": f"serve-{uuid.uuid4().hex[:6]}"},
        broker={"embedded": True, "port": broker_port},
    )
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "hub", "serve", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert wait_port("127.0.0.1", port, 60), (tmp_path / "serve.log").read_text()

        def ingest_connected():
            body = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
            return body["status"] == "ok" and body["ingest"]["connected"]

        wait_until(ingest_connected, timeout=30, interval=0.2)
        stats = requests.get(
            f"http://127.0.0.1:{port}/api/v1/ingest/stats",
            headers={"Authorization": f"Bearer {TOKENS['admin']}"},
            timeout=5,
        ).json()
        assert stats["running"] is True
        check = subprocess.run(
            [sys.executable, "-m", "shared.cli", "hub", "check", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[2],
        )
        # the running hub's loops, read from its /healthz
        assert "ok    running hub" in check.stdout, check.stdout
        assert "ok    loop ingest-writer alive, restarts 0" in check.stdout, check.stdout
        assert "ok    loop ingest-mqtt alive" in check.stdout, check.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "hub_ready" in text and f"dashboard=http://127.0.0.1:{port}/" in text and "hub_stopped" in text
    assert not wait_port("127.0.0.1", broker_port, 0.5), "the embedded broker outlived the hub"


# --- operator CLI ---------------------------------------------------------------------------


@pytest.fixture
def live_hub(app):
    with serve_app(app) as url:
        yield url


def test_operator_models_and_agents(runner, live_hub, make_bundle):
    base = ["--hub", live_hub, "--token", TOKENS["admin"]]
    bundle = make_bundle(version="3.1.4")
    r = runner.invoke(models_cli, ["upload", str(bundle), *base])
    assert r.exit_code == 0, r.output
    assert "registered leuko 3.1.4" in r.output
    r = runner.invoke(models_cli, ["list", *base])
    assert r.exit_code == 0 and "leuko" in r.output and "3.1.4" in r.output and "NAME" in r.output
    r = runner.invoke(models_cli, ["list", "--json", *base])
    assert json.loads(r.output)["items"][0]["version"] == "3.1.4"
    r = runner.invoke(models_cli, ["show", "leuko", "3.1.4", *base])
    assert r.exit_code == 0 and '["ALL", "normal"]' in r.output
    r = runner.invoke(models_cli, ["show", "leuko", "9.9.9", "--json", *base])
    assert r.exit_code == 1 and "not registered" in r.output
    r = runner.invoke(models_cli, ["upload", str(bundle), *base])
    assert r.exit_code == 1 and "already registered" in r.output
    # no broker in this test: activation fails per agent with the API's message
    r = runner.invoke(models_cli, ["activate", "leuko", "3.1.4", "--agent", "a1", "--agent", "a2", *base])
    assert r.exit_code == 1 and "a1:" in r.output and "broker" in r.output
    r = runner.invoke(agents_cli, ["list", *base])
    assert r.exit_code == 0 and "AGENT" in r.output
    r = runner.invoke(agents_cli, ["show", "ghost", *base])
    assert r.exit_code == 1 and "unknown to the hub" in r.output


def test_operator_auth_errors_and_usage(runner, live_hub, monkeypatch):
    r = runner.invoke(agents_cli, ["list", "--hub", live_hub, "--token", "wrong-token-wrong-token"])
    assert r.exit_code == 1 and "unauthorized" in r.output
    monkeypatch.setenv("LEUKONET_HUB_URL", live_hub)
    monkeypatch.setenv("LEUKONET_TOKEN", TOKENS["agent"])
    r = runner.invoke(agents_cli, ["list"])
    assert r.exit_code == 1 and "forbidden" in r.output
    r = runner.invoke(models_cli, ["list", "--json"])
    assert r.exit_code == 0 and json.loads(r.output) == {"items": []}
    r = runner.invoke(models_cli, ["activate", "leuko", "1.0.0"])
    assert r.exit_code == 2  # --agent is required
    r = runner.invoke(models_cli, ["list", "--hub", f"http://127.0.0.1:{free_port()}"])
    assert r.exit_code == 1 and "cannot reach the hub" in r.output


def test_wsgi_builds_app_lazily(tmp_path, monkeypatch):
    import importlib

    import hub.wsgi

    path = write_config(tmp_path / "hub.yaml", tmp_path)
    monkeypatch.setenv("LEUKONET_HUB_CONFIG", str(path))
    module = importlib.reload(hub.wsgi)
    assert module._app is None  # nothing built at import
    from hub.app import close_app

    app = module.app
    try:
        assert app.name == "hub.app"
    finally:
        close_app(app)
        module._app = None
