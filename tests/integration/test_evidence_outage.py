"""Evidence survives a hub outage: a real ``leukonet hub serve`` process on SQLite, an agent enrolled
through it (its own API token, read from credentials.json by the uploader), evidence queued in the
agent's outbox while the hub is stopped, and the images arriving once the hub is back: the original
byte-identical, the preview as made, both readable by a reviewer's token and gone from the outbox."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import yaml

from agents.config import AgentConfig
from agents.credentials import CredentialSource
from agents.daemon import build_agent
from agents.enroll import enroll
from agents.evidence import EvidenceMaker
from shared.preprocessing import decode_image
from tests.agents.test_outbox import result
from tests.conftest import free_port, wait_port, wait_until
from tests.hub.conftest import TOKENS

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ADMIN = {"Authorization": f"Bearer {TOKENS['admin']}"}


class HubProcess:
    """``python -m shared.cli hub serve --config ...`` that can be stopped and started again."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shared.cli", "hub", "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        assert wait_port("127.0.0.1", self.port, 60), self.log.read_text()[-3000:]

        def healthy() -> bool:
            try:
                return requests.get(f"{self.url}/healthz", timeout=2).status_code in (200, 503)
            except requests.RequestException:
                return False

        wait_until(healthy, 30, 0.2, what="hub serve answering /healthz")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


@contextmanager
def hub_process(tmp_path: Path) -> Iterator[HubProcess]:
    port = free_port()
    config = tmp_path / "hub.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "hubdata"),
                "host": "127.0.0.1",
                "port": port,
                "public_url": f"http://127.0.0.1:{port}",
                "secret_key": "evidence-outage-secret-key-not-for-production",
                "tokens": [{"name": "ops", "token": TOKENS["admin"], "role": "admin"}],
                "mqtt": {"host": "127.0.0.1", "port": free_port()},  # no broker: HTTP is what counts
            }
        )
    )
    hub = HubProcess(config, port, tmp_path / "serve.log")
    try:
        yield hub
    finally:
        hub.stop()


def reviewer_token(hub: HubProcess) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "shared.cli", "hub", "tokens", "create", "--name", "review-desk"]
        + ["--role", "reviewer", "--config", str(hub.config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def test_evidence_queued_during_an_outage_arrives_after_it(tmp_path):
    with hub_process(tmp_path) as hub:
        hub.start()
        review = {"Authorization": f"Bearer {reviewer_token(hub)}"}
        issued = requests.post(
            f"{hub.url}/api/v1/agents/enrollment-tokens", json={}, headers=ADMIN, timeout=15
        )
        assert issued.status_code == 201, issued.text
        config = AgentConfig.load(
            None,
            agent_id="lab1-scope1",
            lab="Lab",
            watch_dir=str(tmp_path / "in"),
            state_dir=str(tmp_path / "state"),
            backend="fake",
            device="CPU",
            hub={"url": hub.url},
            evidence={"mode": "original", "retry_min_s": 0.2, "retry_max_s": 1.0},
        )
        enroll(config, issued.json()["token"])
        hub.stop()
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{hub.url}/healthz", timeout=2)

        # the agent classifies while the hub is down: results and evidence go to its outbox
        rng = np.random.default_rng(7)
        ok, buf = cv2.imencode(".png", rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
        assert ok
        original = bytes(buf.tobytes())
        key = hashlib.sha256(original).hexdigest()
        frame = rng.integers(0, 255, (1944, 2592, 3), dtype=np.uint8)
        frame_key = hashlib.sha256(frame.tobytes()).hexdigest()
        maker = EvidenceMaker(config.evidence)
        evidence = [maker.make(key, decode_image(original), original), maker.make(frame_key, frame, None)]
        assert evidence[0] is not None and evidence[0].kind == "original"
        assert evidence[1] is not None and evidence[1].kind == "preview"
        agent = build_agent(config)  # the agent's own composition: queue, outbox, uploader, credentials
        outbox, uploader = agent.outbox, agent.evidence
        assert uploader is not None and outbox.evidence_queue is not None
        queue = outbox.evidence_queue
        outbox.put_many([(result(1), None), (result(2), None)], evidence=evidence)
        assert CredentialSource.from_config(config).load().source == "file"  # the enrolled identity
        uploader.start()
        try:
            wait_until(
                lambda: uploader.stats.failures["unreachable"] >= 2, 30, what="tries against the dead hub"
            )
            assert queue.depth()[0] == 2 and not uploader.stats.dropped

            hub.start()

            def arrived() -> requests.Response | None:
                r = requests.get(f"{hub.url}/api/v1/evidence/{key}", headers=review, timeout=5)
                return r if r.status_code == 200 else None

            got = wait_until(arrived, 60, 0.2, what="the original on the hub after the outage")
            assert got.content == original and got.headers["Content-Type"] == "image/png"
            assert got.headers["Cache-Control"] == "private, no-cache"
            wait_until(lambda: queue.depth() == (0, 0), 30, what="the outbox emptied of evidence")
        finally:
            uploader.stop()
            outbox.close()
        preview = requests.get(f"{hub.url}/api/v1/evidence/{frame_key}", headers=review, timeout=5)
        assert preview.status_code == 200 and preview.content == evidence[1].body
        assert max(decode_image(preview.content).shape[:2]) == config.evidence.preview_max_side
        meta = requests.put(
            f"{hub.url}/api/v1/evidence/{key}", headers={**ADMIN, "X-Evidence-Kind": "original"}, timeout=5
        ).json()
        assert meta["created"] is False and meta["agent_id"] == "lab1-scope1"
        # a viewer token may not see patients' images
        viewer = (
            subprocess.run(
                [sys.executable, "-m", "shared.cli", "hub", "tokens", "create", "--name", "wall-screen"]
                + ["--role", "viewer", "--config", str(hub.config)],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=ROOT,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        denied = requests.get(
            f"{hub.url}/api/v1/evidence/{key}", headers={"Authorization": f"Bearer {viewer}"}, timeout=5
        )
        assert denied.status_code == 403
    assert "evidence_stored" in (tmp_path / "serve.log").read_text()
