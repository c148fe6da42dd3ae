"""Evidence on the agent: previews (size, metadata-free JPEG, odd images), what each mode sends, the
evidence rows of the outbox (dedupe by sha256, their own cap, results never dropped), and the
uploader against a real hub app on loopback (uploads, refusals dropped without blocking the queue,
pauses on outages and on a rotated token, per-item retries, errors per item survived)."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image
from werkzeug.serving import make_server

from agents.config import AgentConfig, EvidenceConfig
from agents.daemon import build_agent
from agents.evidence import (
    Evidence,
    EvidenceMaker,
    EvidenceQueue,
    EvidenceUploader,
    make_preview,
    sniff_content_type,
)
from agents.outbox import Outbox, OutboxError
from hub.app import close_app
from hub.extensions import hub_ext
from shared.hubclient import HubClient
from shared.preprocessing import decode_image
from tests.agents.test_outbox import result
from tests.conftest import free_port, serve_in_thread, wait_until
from tests.hub.conftest import TOKENS, hub_config, migrated_app

MIB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def noise(height: int, width: int, channels: int = 3, dtype: Any = np.uint8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 65535 if dtype == np.uint16 else 255
    shape = (height, width, channels) if channels else (height, width)
    return rng.integers(0, top, shape, dtype=dtype)


def jpeg_segments(data: bytes) -> list[int]:
    """The marker of every JPEG segment before the image data (APPn, DQT, SOF, DHT, SOS...)."""
    assert data[:2] == b"\xff\xd8", "not a JPEG"
    markers, pos = [], 2
    while pos < len(data):
        assert data[pos] == 0xFF
        marker = data[pos + 1]
        markers.append(marker)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return markers
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        pos += 2 + length
    return markers


# --- previews -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("height", "width"), [(1944, 2592), (2592, 1944), (300, 5000), (1024, 1024)])
def test_a_preview_keeps_the_longer_side_within_the_limit(height, width):
    data = make_preview(noise(height, width), max_side=1024, quality=85)
    decoded = decode_image(data)
    assert max(decoded.shape[:2]) == 1024
    ratio = width / height
    assert abs(decoded.shape[1] / decoded.shape[0] - ratio) < 0.02 * max(ratio, 1 / ratio)


def test_small_and_one_pixel_images_are_not_enlarged():
    assert decode_image(make_preview(noise(30, 40), 1024, 85)).shape == (30, 40, 3)
    one = make_preview(noise(1, 1), 1024, 85)
    assert decode_image(one).shape == (1, 1, 3)
    line = make_preview(noise(1, 5000), 64, 85)  # the short side never rounds to 0
    assert decode_image(line).shape == (1, 64, 3)


def test_a_preview_carries_no_metadata_of_the_original():
    exif = Image.Exif()
    exif[0x010F] = "Microscope Maker"  # Make
    exif[0x9286] = "patient: Jane Doe, DOB 1970-01-01"  # UserComment
    buf = io.BytesIO()
    Image.fromarray(noise(200, 300)).save(buf, format="JPEG", exif=exif)
    original = buf.getvalue()
    assert b"Exif" in original and b"Jane Doe" in original
    preview = make_preview(decode_image(original), 128, 85)
    assert b"Jane Doe" not in preview and b"Exif" not in preview
    assert 0xE1 not in jpeg_segments(preview)  # no APP1 (EXIF / XMP) segment at all
    assert set(jpeg_segments(preview)) & {0xE2, 0xED, 0xFE} == set()  # no ICC, IPTC, comment


def test_16_bit_gray_and_alpha_images(tmp_path):
    deep = noise(64, 80, dtype=np.uint16, seed=3)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), deep)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    direct = decode_image(make_preview(raw, 32, 90))
    assert direct.shape == (26, 32, 3) or direct.shape[:2] == (26, 32)
    via_pipeline = decode_image(make_preview(decode_image(path.read_bytes()), 32, 90))
    assert via_pipeline.shape == (26, 32, 3)
    # the 16-bit values were scaled, not clipped: the preview is not saturated white
    assert 60 < float(via_pipeline.mean()) < 200
    assert decode_image(make_preview(noise(20, 20, channels=0), 64, 85)).shape == (20, 20, 3)
    assert decode_image(make_preview(noise(20, 20, channels=4), 64, 85)).shape == (20, 20, 3)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4), dtype=np.float32),
        np.zeros((0, 5, 3), dtype=np.uint8),
        np.zeros((4, 4, 2), dtype=np.uint8),
    ],
)
def test_what_is_not_an_image_is_a_value_error(array):
    with pytest.raises(ValueError, match="cannot make a preview"):
        make_preview(array, 64, 85)


# --- what each mode sends -----------------------------------------------------------------------


def png_bytes(seed: int = 0, size: tuple[int, int] = (60, 80)) -> bytes:
    ok, buf = cv2.imencode(".png", noise(*size, seed=seed))
    assert ok
    return bytes(buf.tobytes())


def test_modes():
    data = png_bytes()
    image = decode_image(data)
    key = sha(data)
    assert EvidenceMaker(EvidenceConfig(mode="none")).make(key, image, data) is None
    original = EvidenceMaker(EvidenceConfig(mode="original")).make(key, image, data)
    assert original is not None and original.body == data and original.kind == "original"
    assert original.content_type == "image/png" and original.content_sha256 == key
    preview = EvidenceMaker(EvidenceConfig(preview_max_side=64)).make(key, image, data)
    assert preview is not None and preview.kind == "preview" and preview.sha256 == key
    assert preview.content_type == "image/jpeg" and preview.content_sha256 == sha(preview.body)
    assert max(decode_image(preview.body).shape[:2]) == 64
    # a camera frame has no file: a preview even in original mode
    frame = EvidenceMaker(EvidenceConfig(mode="original")).make(key, image, None)
    assert frame is not None and frame.kind == "preview"


def test_an_original_over_max_bytes_goes_as_a_preview_and_bad_pixels_as_nothing():
    data = png_bytes(size=(600, 600))
    assert len(data) > 64 * 1024
    maker = EvidenceMaker(EvidenceConfig(mode="original", max_bytes=64 * 1024, preview_max_side=128))
    made = maker.make(sha(data), decode_image(data), data)
    assert made is not None and made.kind == "preview" and maker.previews_for_size == 1
    assert maker.make(sha(data), np.zeros((3, 3), dtype=np.float64), None) is None
    assert maker.failures == 1


def test_content_types_are_sniffed():
    assert sniff_content_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff_content_type(b"II*\x00....") == "image/tiff"
    assert sniff_content_type(b"BM....") == "image/bmp"
    assert sniff_content_type(b"GIF89a") == "application/octet-stream"


def test_the_config_section(tmp_path):
    cfg = AgentConfig.load(None, agent_id="a1", watch_dir=str(tmp_path))
    assert cfg.evidence.mode == "preview" and cfg.evidence.preview_max_side == 1024
    assert cfg.evidence.queue_max_bytes == 1024 * MIB
    with pytest.raises(ValueError, match="retry_min_s"):
        EvidenceConfig(retry_min_s=10, retry_max_s=1)
    with pytest.raises(ValueError, match="one item would not fit the queue"):
        EvidenceConfig(max_bytes=4 * MIB, queue_max_mb=2)


# --- the outbox's evidence rows -----------------------------------------------------------------


def make_outbox(folder: Path, cap: int | None = None) -> Outbox:
    """An outbox with its evidence queue, as the agent builds it."""
    return Outbox(folder / "outbox.sqlite3", evidence_queue=EvidenceQueue(folder / "evidence.sqlite3", cap))


def item(i: int, size: int = 1000, kind: str = "preview") -> Evidence:
    body = bytes([i % 256]) * size
    return Evidence(f"{i:064x}", kind, "image/jpeg", sha(body), body)  # type: ignore[arg-type]


def test_evidence_is_committed_with_its_results_and_deduplicated(tmp_path):
    box = make_outbox(tmp_path)
    box.put_many([(result(1), None), (result(2), None)], evidence=[item(1), None, item(1)])
    assert box.evidence_queue.depth() == (1, 1000) and box.depth() == 2
    box.put_many([(result(3), None)], evidence=[item(1)])  # the same image again: still one row
    assert box.evidence_queue.depth() == (1, 1000)
    box.put_many([(result(4), None)])  # callers without evidence are untouched
    assert box.depth() == 4
    box.close()
    again = make_outbox(tmp_path)
    assert again.evidence_queue.depth() == (1, 1000)
    row = again.evidence_queue.next_due(1e12)
    assert row is not None and row.evidence == item(1) and row.attempts == 0
    assert again.evidence_queue.next_due(1e12, exclude={row.seq}) is None
    again.close()


def test_evidence_is_committed_before_its_results(tmp_path):
    box = make_outbox(tmp_path)
    r = result(1)
    box.put(r)
    # a results batch that fails (a duplicate result id) keeps the evidence committed before it:
    # its image is classified again, under the same key
    with pytest.raises(OutboxError, match="cannot store"):
        box.put_many([(r, None)], evidence=[item(9)])
    assert box.evidence_queue.depth() == (1, 1000) and box.depth() == 1
    # evidence that cannot be stored stops the batch before any result is
    box.evidence_queue.close()
    with pytest.raises(OutboxError, match="cannot queue 1 evidence"):
        box.put_many([(result(2), None)], evidence=[item(10)])
    assert box.depth() == 1 and box.after(0, 10)[0].result_id == str(r.result_id)
    with pytest.raises(ValueError, match="no evidence queue"):
        Outbox(tmp_path / "plain.sqlite3").put_many([(result(3), None)], evidence=[item(11)])
    box.close()


def test_the_evidence_cap_drops_the_oldest_evidence_never_results(tmp_path, caplog):
    box = make_outbox(tmp_path, 3500)
    for i in range(6):
        box.put_many([(result(i), None)], evidence=[item(i)])
    assert box.depth() == 6  # every result is kept
    assert box.evidence_queue.depth() == (3, 3000)
    assert (box.evidence_queue.dropped, box.evidence_queue.dropped_bytes) == (3, 3000)
    kept = []
    while (row := box.evidence_queue.next_due(1e12, exclude=kept)) is not None:
        kept.append(row.seq)
        assert row.evidence.sha256 in {item(i).sha256 for i in (3, 4, 5)}
    assert len(kept) == 3
    assert "evidence_dropped" in caplog.text and "evidence.queue_max_mb" in caplog.text
    box.close()


def test_retries_wait_and_count(tmp_path):
    box = make_outbox(tmp_path)
    box.put_many([(result(1), None), (result(2), None)], evidence=[item(1), item(2)])
    first = box.evidence_queue.next_due(100.0)
    assert first is not None
    assert box.evidence_queue.retry(first.seq, next_try_at=200.0, error="HTTP 500") == 1
    second = box.evidence_queue.next_due(150.0)  # the failing item waits; the next one is not blocked
    assert second is not None and second.seq != first.seq
    box.evidence_queue.done(second.seq)
    assert box.evidence_queue.next_due(150.0) is None and box.evidence_queue.due_at() == 200.0
    back = box.evidence_queue.next_due(200.0)
    assert back is not None and back.seq == first.seq and back.attempts == 1
    assert box.evidence_queue.clear() == (1, 1000) and box.evidence_queue.depth() == (0, 0)
    box.close()


# --- the uploader against a real hub ------------------------------------------------------------


@pytest.fixture
def hub(tmp_path) -> Iterator[Any]:
    app = migrated_app(hub_config(tmp_path, None))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    try:
        with serve_in_thread(server) as url:
            yield app, url
    finally:
        close_app(app)


def stored(app: Any, key: str) -> bytes | None:
    path = hub_ext.for_app(app).evidence.path(key)
    return path.read_bytes() if path.exists() else None


def uploader(box: Outbox, url: str, token: Any = TOKENS["agent"], **cfg: Any) -> EvidenceUploader:
    config = EvidenceConfig(**({"retry_min_s": 0.05, "retry_max_s": 0.2} | cfg))
    assert box.evidence_queue is not None
    return EvidenceUploader(box.evidence_queue, url, token if callable(token) else (lambda: token), config)


def originals(n: int, seed: int = 0) -> list[Evidence]:
    out = []
    for i in range(n):
        data = png_bytes(seed=seed + i, size=(20, 30))
        out.append(Evidence(sha(data), "original", "image/png", sha(data), data))
    return out


def test_uploads_reach_the_hub_and_leave_the_outbox(tmp_path, hub):
    app, url = hub
    box = make_outbox(tmp_path)
    evs = originals(4)
    data = png_bytes(seed=99, size=(300, 400))
    preview = EvidenceMaker(EvidenceConfig(preview_max_side=100)).make(sha(data), decode_image(data), data)
    assert preview is not None
    box.put_many([(result(i), None) for i in range(5)], evidence=[*evs, preview])
    up = uploader(box, url, upload_concurrency=2)
    up.start()
    try:
        wait_until(lambda: box.evidence_queue.depth() == (0, 0), 20, what="every evidence row uploaded")
    finally:
        up.stop()
    for ev in evs:
        assert stored(app, ev.sha256) == ev.body  # byte-identical originals
    assert stored(app, preview.sha256) == preview.body
    assert up.stats.uploaded == 5 and not up.stats.dropped
    box.close()


def test_a_refused_item_is_dropped_and_does_not_block_the_queue(tmp_path, hub, caplog):
    app, url = hub
    box = make_outbox(tmp_path)
    good = originals(2, seed=10)
    bad = Evidence("ab" * 32, "original", "image/png", "ab" * 32, good[0].body)  # not its key's bytes
    box.put_many([(result(i), None) for i in range(3)], evidence=[bad, *good])
    up = uploader(box, url)
    client = HubClient(url, retries=0)
    while up.upload_next(client):
        pass
    assert box.evidence_queue.depth() == (0, 0)
    assert up.stats.dropped == {"http_400": 1} and up.stats.uploaded == 2
    assert stored(app, bad.sha256) is None and all(stored(app, g.sha256) == g.body for g in good)
    assert "digest_mismatch" in caplog.text and "evidence_dropped" in caplog.text
    box.close()


def test_a_wrong_token_pauses_and_the_current_token_is_asked_every_time(tmp_path, hub):
    app, url = hub
    box = make_outbox(tmp_path)
    ev = originals(1, seed=20)[0]
    box.put_many([(result(1), None)], evidence=[ev])
    tokens = ["rotated-away-token-0123456789", None, TOKENS["agent"]]
    asked = []

    def current() -> str | None:
        asked.append(1)
        return tokens[min(len(asked), len(tokens)) - 1]

    up = uploader(box, url, token=current)
    client = HubClient(url, retries=0)
    assert up.upload_next(client)  # 401: paused, the row kept
    assert up.stats.failures["http_401"] == 1 and box.evidence_queue.depth()[0] == 1
    assert up.upload_next(client)  # no token at all: paused, kept
    assert up.stats.failures["no_token"] == 1 and box.evidence_queue.depth()[0] == 1
    assert up.upload_next(client)  # the token of now
    assert box.evidence_queue.depth() == (0, 0) and stored(app, ev.sha256) == ev.body and len(asked) == 3
    assert not up.stats.dropped
    box.close()


def test_an_unreachable_hub_pauses_without_losing_anything(tmp_path):
    box = make_outbox(tmp_path)
    box.put_many([(result(1), None)], evidence=originals(1))
    up = uploader(box, f"http://127.0.0.1:{free_port()}", retry_min_s=5, retry_max_s=5)
    up.start()
    try:
        wait_until(lambda: up.stats.failures["unreachable"] >= 1, 10, what="a failed try")
        assert box.evidence_queue.depth()[0] == 1 and not up.stats.dropped
        threading.Event().wait(0.5)  # paused: no second try within the back-off
        assert up.stats.failures["unreachable"] == 1
    finally:
        up.stop()
    box.close()


@pytest.fixture
def small_hub(tmp_path) -> Iterator[Any]:
    """A real hub that takes evidence up to 64 KiB."""
    app = migrated_app(hub_config(tmp_path, None, evidence={"max_bytes": 64 * 1024}))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    try:
        with serve_in_thread(server) as url:
            yield app, url
    finally:
        close_app(app)


def test_an_item_the_hub_will_not_take_never_blocks_the_queue(tmp_path, small_hub):
    """Over the hub's max_bytes: refused before the body is read (413, or a connection the hub
    broke off, which the empty-body probe tells from an outage); the next item goes through."""
    app, url = small_hub
    big = png_bytes(seed=40, size=(700, 700))
    assert len(big) > 1024 * 1024
    small = originals(1, seed=41)[0]
    box = make_outbox(tmp_path)
    box.put_many(
        [(result(1), None), (result(2), None)],
        evidence=[Evidence(sha(big), "original", "image/png", sha(big), big), small],
    )
    now = [1000.0]
    assert box.evidence_queue is not None
    up = EvidenceUploader(
        box.evidence_queue, url, lambda: TOKENS["agent"], EvidenceConfig(max_attempts=2), clock=lambda: now[0]
    )
    client = HubClient(url, retries=0)
    assert up.upload_next(client)  # the big one: refused or broken off, never a pause
    assert up.upload_next(client)  # so the small one goes at once
    assert stored(app, small.sha256) == small.body
    now[0] += 3600
    while up.upload_next(client):
        pass
    assert box.evidence_queue.depth() == (0, 0) and stored(app, sha(big)) is None
    assert sum(up.stats.dropped.values()) == 1 and up.stats.uploaded == 1
    assert up.stats.failures["unreachable"] == 0
    box.close()


def test_a_broken_connection_to_a_hub_that_has_the_image_counts_as_uploaded(tmp_path, hub):
    app, url = hub
    ev = originals(1, seed=50)[0]
    box = make_outbox(tmp_path)
    box.put_many([(result(1), None)], evidence=[ev])
    up = uploader(box, url)
    assert up.upload_next(HubClient(url, retries=0))
    row = Evidence(ev.sha256, ev.kind, ev.content_type, ev.content_sha256, ev.body)
    headers = {"Authorization": f"Bearer {TOKENS['agent']}", "X-Evidence-Kind": "original"}
    # what the probe sends: the same PUT with no body, answered 200 for a key the hub has
    r = HubClient(url, retries=0).request("PUT", f"/evidence/{row.sha256}", data=b"", headers=headers)
    assert r.status_code == 200 and r.json()["created"] is False
    box.close()


class HangsUpOnBodies(http.server.BaseHTTPRequestHandler):
    """A hub that drops the connection on any upload with a body (as a server may after answering a
    refusal early) and answers the empty-body probe with ``ANSWER``."""

    ANSWER: tuple[int, bytes] = (400, b'{"error": {"code": "empty_body", "message": "the body is empty"}}')

    def do_PUT(self) -> None:  # noqa: N802 - http.server's name
        if int(self.headers["Content-Length"]):
            self.close_connection = True
            self.connection.shutdown(2)
            return
        status, body = self.ANSWER
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("probe_answer", ["empty_body", "exists"])
def test_a_broken_connection_is_told_from_an_outage_by_the_probe(tmp_path, probe_answer):
    class Handler(HangsUpOnBodies):
        pass

    if probe_answer == "exists":
        Handler.ANSWER = (200, b'{"created": false}')
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box = make_outbox(tmp_path)
    box.put_many([(result(1), None)], evidence=originals(1, seed=60))
    assert box.evidence_queue is not None
    with serve_in_thread(server) as url:
        up = EvidenceUploader(box.evidence_queue, url, lambda: "t", EvidenceConfig(), clock=lambda: 1000.0)
        assert up.upload_next(HubClient(url, retries=0))
    assert up.stats.failures["unreachable"] == 0  # not taken for an outage: nothing paused
    if probe_answer == "exists":
        assert box.evidence_queue.depth() == (0, 0) and up.stats.uploaded == 1
    else:
        assert up.stats.failures["connection_broken"] == 1
        assert box.evidence_queue.depth()[0] == 1 and box.evidence_queue.due_at() > 1000.0  # waits alone
    box.close()


class Failing(http.server.BaseHTTPRequestHandler):
    """A hub that answers every upload 500 (a hub bug for these images)."""

    def do_PUT(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"error": {"code": "internal_error", "message": "boom"}}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_5xx_makes_the_item_wait_alone_and_it_is_dropped_after_max_attempts(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    box = make_outbox(tmp_path)
    box.put_many([(result(1), None)], evidence=originals(1))
    now = [1000.0]
    with serve_in_thread(server) as url:
        up = EvidenceUploader(
            box.evidence_queue,
            url,
            lambda: "t",
            EvidenceConfig(retry_min_s=10, retry_max_s=40, max_attempts=4),
            rng=lambda: 1.0,
            clock=lambda: now[0],
        )
        client = HubClient(url, retries=0)
        waits = []
        for _ in range(3):
            assert up.upload_next(client)
            due = box.evidence_queue.due_at()
            assert due is not None
            waits.append(due - now[0])
            assert not up.upload_next(client)  # not due yet: nothing else to do
            now[0] = due
        assert waits == [10.0, 20.0, 40.0]  # doubling, capped (jitter pinned to its top)
        assert up.upload_next(client)  # the 4th failure: dropped
    assert box.evidence_queue.depth() == (0, 0) and up.stats.dropped == {"max_attempts": 1}
    box.close()


def test_an_error_in_one_item_is_counted_and_the_uploader_goes_on(tmp_path, hub):
    app, url = hub
    box = make_outbox(tmp_path)
    evs = originals(2, seed=30)
    box.put_many([(result(1), None), (result(2), None)], evidence=evs)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("credentials store exploded")
        return TOKENS["agent"]

    up = uploader(box, url, token=flaky)
    up.start()
    try:
        wait_until(lambda: box.evidence_queue.depth() == (0, 0), 20, what="both uploaded despite the error")
    finally:
        up.stop()
    assert up.stats.failures["error"] == 1 and up.stats.uploaded == 2
    box.close()


# --- wiring -------------------------------------------------------------------------------------


def agent_config(tmp_path: Path, mode: str) -> AgentConfig:
    return AgentConfig.load(
        None,
        agent_id="a1",
        watch_dir=str(tmp_path / "in"),
        state_dir=str(tmp_path / "state"),
        backend="fake",
        device="CPU",
        hub={"url": "http://127.0.0.1:9", "token": "tok"},
        evidence={"mode": mode},
    )


def test_the_agent_builds_the_uploader_and_none_discards_queued_evidence(tmp_path):
    box = make_outbox(tmp_path / "state")
    box.put_many([(result(1), None)], evidence=[item(1)])
    box.close()
    agent = build_agent(agent_config(tmp_path, "preview"))
    try:
        assert agent.evidence is not None and agent.outbox.evidence_queue.depth() == (1, 1000)
    finally:
        agent.outbox.close()
    agent = build_agent(agent_config(tmp_path, "none"), connect=False)
    try:
        assert agent.evidence is None and agent.outbox.evidence_queue.depth() == (0, 0)
    finally:
        agent.outbox.close()
