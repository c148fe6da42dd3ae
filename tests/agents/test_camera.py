"""The camera/video source: every Nth frame of a video file classified; a dead camera is reopened."""

import threading

import cv2
import numpy as np
import pytest

from agents.config import AgentConfig
from agents.daemon import build_agent
from shared.schemas import ClassificationResult
from tests.agents.helpers import BLUE, RED, make_bundle, make_keys, wait_until


@pytest.fixture(scope="module")
def keys_and_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("camera")
    keys = make_keys(folder)
    return keys, make_bundle(folder, keys, "1.0.0")[0]


def write_video(path, colours):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi here"
    for colour in colours:
        writer.write(np.full((48, 64, 3), colour, dtype=np.uint8))
    writer.release()
    return path


def agent_for(tmp_path, keys, bundle, camera):
    cfg = AgentConfig.load(
        None,
        agent_id="cam-1",
        watch_dir=tmp_path / "in",
        state_dir=tmp_path / "state",
        backend="fake",
        model_public_key=keys.public,
        initial_model=bundle,
        camera={"enabled": True} | camera,
    )
    return build_agent(cfg, connect=False)


def test_every_nth_frame_of_a_video_is_classified(tmp_path, keys_and_bundle):
    keys, bundle = keys_and_bundle
    # frames 1..20: blue for odd-numbered blocks of 5, red for even ones
    colours = [BLUE if (i // 5) % 2 == 0 else RED for i in range(20)]
    video = write_video(tmp_path / "smear.avi", colours)
    agent = agent_for(
        tmp_path, keys, bundle, {"source": str(video), "every_nth_frame": 5, "name_prefix": "scope"}
    )
    camera = agent.sources.get("camera")
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: agent.outbox.depth() == 4, 20)
        assert camera is not None and camera.finished.wait(10)
        rows = [ClassificationResult.model_validate_json(r.payload) for r in agent.outbox.after(0, 100)]
    finally:
        stop.set()
        thread.join(30)
    assert camera.frames_read == 20 and camera.frames_submitted == 4
    frames = sorted((r.image_name.rsplit("-f", 1)[1], r.label) for r in rows)
    assert frames == [
        ("00000001", "ALL"),
        ("00000006", "normal"),
        ("00000011", "ALL"),
        ("00000016", "normal"),
    ]
    assert all(r.image_name.startswith("scope-") for r in rows)
    assert len({r.image_sha256 for r in rows}) == 2  # identical frames hash alike


class DeadCamera:
    opened = 0

    def __init__(self, target):
        DeadCamera.opened += 1

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return False

    def release(self):
        return None


def test_a_camera_that_does_not_open_is_retried(tmp_path, keys_and_bundle, caplog):
    from agents.sources.camera import CameraSource

    keys, bundle = keys_and_bundle
    agent = agent_for(tmp_path, keys, bundle, {"source": "7", "reopen_s": 0.05})
    camera = CameraSource(agent.config.camera, agent.pipeline, agent.models, capture_factory=DeadCamera)
    camera.start()
    try:
        assert wait_until(lambda: DeadCamera.opened >= 3, 10)
    finally:
        camera.stop()
        agent.close()
    assert "camera_open_failed" in caplog.text and "source=7" in caplog.text
