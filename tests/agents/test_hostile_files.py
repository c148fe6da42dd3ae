"""A careless microscope and a hostile broker user: the agent keeps classifying the good images.

A folder of hostile files (truncated, empty, text, a pixel bomb, 16-bit, gray, RGBA, CMYK JPEG, odd
names) goes through a running agent on a real Mosquitto, after a poison retained ``desired`` was
left for it. Every decodable image is classified, every other file lands in ``failed/`` with its
reason, nothing stays in the watch folder, and the MQTT link keeps working.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from shared.topics import Kind, build
from tests.agents.helpers import BLUE, RED, Recorder, wait_until, write_png
from tests.agents.test_daemon import (  # noqa: F401 (keys_and_bundles is a fixture)
    Running,
    config,
    keys_and_bundles,
    results,
    statuses,
)
from tests.hub.conftest import publish_all
from tests.shared.test_hostile_input import png_declaring


def encoded(suffix: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(suffix, image)
    assert ok
    return buf.tobytes()


def cmyk_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("CMYK", (40, 30), (200, 30, 0, 10)).save(out, "JPEG")
    return out.getvalue()


def test_hostile_files_and_a_poison_desired_do_not_stop_the_agent(tmp_path, private_broker, keys_and_bundles):  # noqa: F811
    keys, (v1, _), _ = keys_and_bundles
    agent_id = "hostile-1"
    publish_all(
        private_broker.port,
        [(build(agent_id, Kind.DESIRED), b"[" * 10_000, True)],  # left retained by an attacker
    )
    cfg = config(tmp_path, private_broker, keys, agent_id, initial_model=v1)
    rec = Recorder(private_broker.host, private_broker.port, f"leukonet/v1/agents/{agent_id}/#")
    good = {
        "blue.png": encoded(".png", np.full((48, 64, 3), BLUE, np.uint8)),
        "red.jpg": encoded(".jpg", np.full((48, 64, 3), RED, np.uint8)),
        "gray.png": encoded(".png", np.full((48, 64), 90, np.uint8)),
        "deep16.png": encoded(".png", np.full((48, 64, 3), 50_000, np.uint16)),
        "alpha.png": encoded(".png", np.full((48, 64, 4), 120, np.uint8)),
        "cmyk.jpg": cmyk_jpeg(),
        "spaces and ünïcödé; 'quoted'.png": encoded(".png", np.full((48, 64, 3), BLUE, np.uint8)),
        "-leading-dash.png": encoded(".png", np.full((48, 64, 3), RED, np.uint8)),
        ("x" * 200) + ".png": encoded(".png", np.full((48, 64, 3), BLUE, np.uint8)),
    }
    full = good["blue.png"]
    bad = {
        "truncated.png": (full[: len(full) // 2], "truncated"),
        "empty.jpg": (b"", "empty"),
        "text.jpg": (b"this is a lab note, not a picture\n" * 20, "not a decodable image"),
        "bomb.png": (png_declaring(60_000, 60_000), "too many pixels"),
        "large.png": (png_declaring(12_000, 9_000), "over the limit of 100000000"),
    }
    cfg.watch_dir.mkdir(parents=True, exist_ok=True)
    for name, data in good.items():
        (cfg.watch_dir / name).write_bytes(data)
    for name, (data, _) in bad.items():
        (cfg.watch_dir / name).write_bytes(data)
    running = Running(cfg)
    try:
        assert rec.wait_for(
            lambda m: len([x for x in m if x[0].endswith("/results")]) >= len(good), timeout=60
        )
        assert {r.image_name for r in results(rec)} == set(good)
        assert wait_until(lambda: len(list(cfg.failed_path.glob("*.reason.txt"))) == len(bad), timeout=30)
        for name, (_, why) in bad.items():
            assert why in (cfg.failed_path / f"{name}.reason.txt").read_text(), name
        assert wait_until(lambda: sorted(p.name for p in cfg.done_path.iterdir()) == sorted(good))
        assert wait_until(lambda: [p.name for p in cfg.watch_dir.iterdir() if p.is_file()] == [])
        link = running.agent.link
        assert link is not None and link.rejected_messages >= 1, "the poison desired was not counted"
        # The MQTT thread survived it: a new image still gets through, and a NaN desired is refused too.
        publish_all(
            private_broker.port,
            [(build(agent_id, Kind.DESIRED), b'{"agent_id": "hostile-1", "set_at": NaN}', True)],
        )
        write_png(cfg.watch_dir / "after.png", RED)
        assert rec.wait_for(lambda m: any(b'"after.png"' in p for t, p, _ in m if t.endswith("/results")))
        assert wait_until(lambda: link.rejected_messages >= 2)
        # The status the hub sees lists every loop alive, none restarted.
        loops_seen = {"decode-0", "decode-1", "outbox-writer", "models", "mqtt", "outbox-pump", "status"}
        loops_seen |= {f"evidence-upload-{i}" for i in range(cfg.evidence.upload_concurrency)}
        assert wait_until(
            lambda: any(
                set(s.loops) == loops_seen and all(v.alive and v.restarts == 0 for v in s.loops.values())
                for s in statuses(rec)
            )
        ), statuses(rec)[-1].loops
    finally:
        running.stop()
        rec.stop()
