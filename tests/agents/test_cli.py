import http.server
import json
from contextlib import contextmanager

import pytest
from click.testing import CliRunner

from agents.backends import create_backend
from agents.cli import cli
from agents.models import ModelManager
from tests.agents.helpers import BLUE, RED, make_bundle, make_keys, write_png
from tests.conftest import free_port, serve_in_thread


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    keys = make_keys(folder)
    return (
        folder,
        keys,
        make_bundle(folder, keys, "1.0.0")[0],
        make_bundle(folder, keys, "2.0.0", flip=True)[0],
    )


def test_bad_config_exits_non_zero_naming_the_field(tmp_path):
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"agent_id: 'no spaces allowed'\nwatch_dir: {tmp_path}\n")
    for command in ("run", "check", "rollback"):
        res = CliRunner().invoke(cli, [command, "--config", str(cfg)])
        assert res.exit_code == 2, res.output
        assert "agent_id" in res.output and "is not valid" in res.output


def test_classify_prints_one_json_line_per_file(tmp_path, setup):
    folder, keys, v1, _ = setup
    blue, red = write_png(tmp_path / "b.png", BLUE), write_png(tmp_path / "r.png", RED)
    res = CliRunner().invoke(
        cli,
        [
            "classify",
            "--bundle",
            str(v1),
            "--public-key",
            str(keys.public),
            "--device",
            "CPU",
            str(blue),
            str(red),
        ],
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.output.splitlines()]
    assert [(x["file"], x["label"], x["model_version"]) for x in lines] == [
        (str(blue), "ALL", "1.0.0"),
        (str(red), "normal", "1.0.0"),
    ]
    assert abs(sum(lines[0]["probabilities"].values()) - 1) < 1e-5


def test_classify_model_dir_reports_bad_files_and_exits_1(tmp_path, setup):
    folder, keys, v1, _ = setup
    from shared.bundle import load_public_key, verify_bundle

    verify_bundle(v1, load_public_key(keys.public), tmp_path / "m")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    good = write_png(tmp_path / "g.png", BLUE)
    res = CliRunner().invoke(
        cli,
        [
            "classify",
            "--model-dir",
            str(tmp_path / "m"),
            "--public-key",
            str(keys.public),
            "--backend",
            "fake",
            str(good),
            str(bad),
        ],
    )
    assert res.exit_code == 1
    lines = [json.loads(x) for x in res.output.splitlines()]
    assert lines[0]["label"] == "ALL" and "not a decodable image" in lines[1]["error"]


def test_classify_rejects_a_foreign_key(tmp_path, setup):
    _, _, v1, _ = setup
    other = make_keys(tmp_path)
    res = CliRunner().invoke(
        cli, ["classify", "--bundle", str(v1), "--public-key", str(other.public), str(v1)]
    )
    assert res.exit_code == 1 and "signature does not verify" in res.output


def test_check_reports_unreachable_broker_and_hub(tmp_path, setup):
    _, keys, _, _ = setup
    cfg = tmp_path / "agent.yaml"
    port = free_port()
    cfg.write_text(
        f"agent_id: chk\nwatch_dir: {tmp_path}/in\nstate_dir: {tmp_path}/state\ndevice: CPU\n"
        f"model_public_key: {keys.public}\nmqtt:\n  port: {port}\nhub:\n  url: http://127.0.0.1:{port}\n"
    )
    res = CliRunner().invoke(cli, ["check", "--config", str(cfg)])
    assert res.exit_code == 1
    assert "ok   openvino devices: CPU" in res.output
    # Precision defaults to FP32 and the device runs f32, on CPUs with and without bf16.
    assert "ok   device: CPU, precision FP32, executes f32" in res.output
    assert "FAIL broker" in res.output and "FAIL hub" in res.output and "2 check(s) failed" in res.output


def test_rollback_command_restores_the_previous_model(tmp_path, setup):
    _, keys, v1, v2 = setup
    state = tmp_path / "state"
    mm = ModelManager("rb", state, lambda: create_backend("fake"), keys.public)
    mm.install_bundle(v1)
    mm.install_bundle(v2)
    mm.close()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        f"agent_id: rb\nwatch_dir: {tmp_path}/in\nstate_dir: {state}\nbackend: fake\n"
        f"model_public_key: {keys.public}\n"
    )
    res = CliRunner().invoke(cli, ["rollback", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "leukonet-tiny 1.0.0" in res.output
    assert json.loads((state / "active.json").read_text())["rejected"]["version"] == "2.0.0"
    res = CliRunner().invoke(cli, ["rollback", "--config", str(cfg)])
    assert res.exit_code == 1 and "no previous model" in res.output


def test_a_second_process_cannot_take_the_same_state_dir(tmp_path):
    from agents.statelock import StateLock, StateLockedError

    with StateLock(tmp_path), pytest.raises(StateLockedError, match="already running"):
        StateLock(tmp_path).acquire()
    with StateLock(tmp_path):  # released: free again
        pass


@contextmanager
def fake_hub(token: str):
    """/healthz open, /api/v1/models only with ``Bearer <token>`` (like the real hub)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            ok = self.path == "/healthz" or (
                self.path == "/api/v1/models" and self.headers.get("Authorization") == f"Bearer {token}"
            )
            body = b'{"status": "ok"}' if ok else b'{"error": {"code": "unauthorized", "message": "no"}}'
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # noqa: A002
            return

    with serve_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        yield url


@pytest.mark.parametrize(("token", "ok"), [("agent-token-123", True), ("wrong-token", False)])
def test_check_opens_an_mqtt_session_and_tries_the_hub_token(tmp_path, setup, private_broker, token, ok):
    _, keys, _, _ = setup
    cfg = tmp_path / "agent.yaml"
    with fake_hub("agent-token-123") as hub:
        cfg.write_text(
            f"agent_id: chk2\nwatch_dir: {tmp_path}/in\nstate_dir: {tmp_path}/state\ndevice: CPU\n"
            f"model_public_key: {keys.public}\nmqtt:\n  port: {private_broker.port}\nhub:\n  url: {hub}\n"
            f"  token: {token}\nhttp:\n  enabled: true\n  port: {free_port()}\n"
        )
        res = CliRunner().invoke(cli, ["check", "--config", str(cfg)])
    assert "ok   broker" in res.output and "MQTT session accepted" in res.output
    assert "ok   hub: GET" in res.output and "ok   http endpoint" in res.output
    if ok:
        assert res.exit_code == 0, res.output
        assert "ok   hub token" in res.output
    else:
        assert res.exit_code == 1
        assert "FAIL hub token" in res.output and "HTTP 401" in res.output and "agent role" in res.output


def test_classify_flags_low_confidence(tmp_path, setup):
    _, keys, v1, _ = setup
    grey = write_png(tmp_path / "grey.png", (128, 128, 128))
    args = ["classify", "--bundle", str(v1), "--public-key", str(keys.public), "--backend", "fake"]
    res = CliRunner().invoke(cli, [*args, "--low-confidence-threshold", "0.99", str(grey)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["low_confidence"] is True
    res = CliRunner().invoke(cli, [*args, "--low-confidence-threshold", "0.1", str(grey)])
    assert json.loads(res.output)["low_confidence"] is False
