import http.server
import json
import threading
import zipfile
from contextlib import contextmanager

import numpy as np
import pytest

from agents.backends import BackendError, create_backend
from agents.models import ModelManager
from shared.bundle import sha256_file
from shared.schemas import DesiredModel, ModelEvent, ModelEventKind
from tests.agents.helpers import SIZE, bundle_server, make_bundle, make_keys, wait_until
from tests.conftest import serve_in_thread

TOKEN = "agent-token"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles")
    keys = make_keys(folder)
    v1 = make_bundle(folder, keys, "1.0.0", flip=False)
    v2 = make_bundle(folder, keys, "2.0.0", flip=True)
    bad_ref = make_bundle(folder, keys, "3.0.0", reference_probs=[0.5, 0.5])
    return keys, v1, v2, bad_ref


def tamper(src, dst, member="ir/fp32/model.bin"):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == member:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            zout.writestr(info, data)
    return dst, sha256_file(dst)


def manager(state_dir, keys, events, token=TOKEN, public_key=True, hub_url=None):
    return ModelManager(
        agent_id="a1",
        state_dir=state_dir,
        make_backend=lambda: create_backend("openvino", "CPU", "FP32"),
        public_key_path=keys.public if public_key else None,
        hub_token=token,
        hub_url=hub_url,
        publish_event=events.append,
    )


def desired(base_url, path, sha, version):
    return DesiredModel(
        agent_id="a1",
        model_name="leukonet-tiny",
        model_version=version,
        bundle_url=f"{base_url}{path}",
        bundle_sha256=sha,
        rollout_id="r1",
    )


def kinds(events: list[ModelEvent]) -> list[str]:
    return [e.event.value for e in events]


def test_desired_model_is_downloaded_verified_and_swapped(tmp_path, bundles):
    keys, (v1, _), (v2, sha2), _ = bundles
    events: list[ModelEvent] = []
    with bundle_server({"/b/2": v2.read_bytes()}, TOKEN) as (url, seen):
        mm = manager(tmp_path, keys, events, hub_url=url)
        mm.install_bundle(v1)
        assert mm.active is not None and mm.active.version == "1.0.0"
        assert mm.apply(desired(url, "/b/2", sha2, "2.0.0")) is True
    assert seen == ["/b/2"]
    assert kinds(events) == ["verifying", "downloading", "verifying", "activated"]
    assert events[-1].rollout_id == "r1" and events[-1].model_version == "2.0.0"
    assert mm.active.version == "2.0.0"
    state = json.loads((tmp_path / "active.json").read_text())
    assert state["current"]["version"] == "2.0.0" and state["previous"]["version"] == "1.0.0"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "leukonet-tiny-1.0.0",
        "leukonet-tiny-2.0.0",
    ]
    assert list((tmp_path / "downloads").iterdir()) == []
    # the same desired state again is a no-op
    assert mm.apply(desired("http://127.0.0.1:9", "/b/2", sha2, "2.0.0")) is False
    mm.close()

    restarted = manager(tmp_path, keys, [])
    loaded = restarted.load_active()
    assert loaded is not None and loaded.version == "2.0.0"
    restarted.close()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered", "differs from the manifest"),
        ("wrong_sha", "differs from the desired"),
        ("bad_token", "HTTP 401"),
        ("smoke_test", "smoke test failed"),
        ("no_key", "model_public_key is not set"),
    ],
)
def test_bad_updates_fail_and_keep_the_current_model(tmp_path, bundles, case, reason):
    keys, (v1, _), (v2, sha2), (v3, sha3) = bundles
    events: list[ModelEvent] = []
    first = manager(tmp_path / "state", keys, [])
    first.install_bundle(v1)
    first.close()
    body, sha, version = v2.read_bytes(), sha2, "2.0.0"
    if case == "tampered":
        bad, sha = tamper(v2, tmp_path / "bad.zip")
        body = bad.read_bytes()
    elif case == "wrong_sha":
        sha = "0" * 64
    elif case == "smoke_test":
        body, sha, version = v3.read_bytes(), sha3, "3.0.0"
    with bundle_server({"/b": body}, TOKEN) as (url, _):
        mm = manager(
            tmp_path / "state",
            keys,
            events,
            token="wrong" if case == "bad_token" else TOKEN,
            public_key=case != "no_key",
            hub_url=url,
        )
        if case != "no_key":
            mm.load_active()
        assert mm.apply(desired(url, "/b", sha, version)) is False
    assert events[-1].event is ModelEventKind.FAILED
    assert reason in events[-1].detail
    if case != "no_key":
        assert mm.active is not None and mm.active.version == "1.0.0"
        out = mm.active.backend.infer(np.zeros((1, SIZE, SIZE, 3), dtype=np.uint8))
        assert out.shape == (1, 2)
    assert json.loads((tmp_path / "state" / "active.json").read_text())["current"]["version"] == "1.0.0"
    assert not (tmp_path / "state" / "models" / f"leukonet-tiny-{version}").exists()
    mm.close()


def test_rollback_restores_previous_and_rejects_the_rolled_back_version(tmp_path, bundles):
    keys, (v1, _), (v2, sha2), _ = bundles
    events: list[ModelEvent] = []
    mm = manager(tmp_path, keys, events)
    with pytest.raises(Exception, match="no previous model"):
        mm.rollback()
    mm.install_bundle(v1)
    mm.install_bundle(v2)
    assert mm.rollback().version == "1.0.0"
    assert events[-1].event is ModelEventKind.ROLLED_BACK and events[-1].model_version == "2.0.0"
    with bundle_server({"/b": v2.read_bytes()}, TOKEN) as (url, seen):
        assert mm.apply(desired(url, "/b", sha2, "2.0.0")) is False
        assert seen == []
    assert "rolled back" in events[-1].detail
    mm.close()


def test_a_tampered_model_folder_is_not_loaded_at_restart(tmp_path, bundles):
    keys, (v1, _), _, _ = bundles
    mm = manager(tmp_path, keys, [])
    mm.install_bundle(v1)
    mm.close()
    xml = tmp_path / "models" / "leukonet-tiny-1.0.0" / "ir" / "fp32" / "model.xml"
    xml.write_text(xml.read_text().replace("tiny", "evil"))
    with pytest.raises(Exception, match="differs from the manifest"):
        manager(tmp_path, keys, []).load_active()


def test_inference_in_flight_finishes_on_the_old_backend(tmp_path, bundles):
    keys, (v1, _), (v2, _), _ = bundles
    mm = manager(tmp_path, keys, [])
    mm.install_bundle(v1)
    batch = np.zeros((1, SIZE, SIZE, 3), dtype=np.uint8)
    with mm.lease() as old:
        assert old is not None
        worker = threading.Thread(target=mm.install_bundle, args=(v2,))
        worker.start()
        assert wait_until(lambda: mm.active is not None and mm.active.version == "2.0.0", 30)
        assert old.backend.infer(batch).shape == (1, 2)  # not closed under us
    worker.join(30)
    assert not worker.is_alive()
    with pytest.raises(BackendError):
        old.backend.infer(batch)
    mm.close()


@contextmanager
def flaky_range_server(body: bytes, token: str, cut_at: int, fail_first: int = 1):
    """Serves ``body`` with Range support; the first ``fail_first`` responses stop after ``cut_at`` bytes."""
    ranges: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            ranges.append(self.headers.get("Range"))
            if self.headers.get("Authorization") != f"Bearer {token}":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            if self.headers.get("Range"):
                start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if len(ranges) <= fail_first:
                self.wfile.write(body[start:cut_at])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body[start:])

        def log_message(self, format, *args):  # noqa: A002
            return

    with serve_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        yield url, ranges


def test_a_broken_download_resumes_where_it_stopped(tmp_path, bundles):
    keys, (v1, _), (v2, sha2), _ = bundles
    events: list[ModelEvent] = []
    body = v2.read_bytes()
    with flaky_range_server(body, TOKEN, cut_at=len(body) // 3) as (url, ranges):
        mm = ModelManager(
            "a1",
            tmp_path,
            lambda: create_backend("openvino", "CPU", "FP32"),
            keys.public,
            hub_token=TOKEN,
            hub_url=url,
            publish_event=events.append,
            download_attempts=3,
            retry_backoff_s=0.01,
        )
        mm.install_bundle(v1)
        assert mm.apply(desired(url, "/b/2", sha2, "2.0.0")) is True
    assert ranges == [None, f"bytes={len(body) // 3}-"]
    assert mm.active is not None and mm.active.version == "2.0.0"
    assert kinds(events)[-1] == "activated"
    assert list((tmp_path / "downloads").iterdir()) == []
    mm.close()


def test_a_download_that_keeps_failing_is_reported_and_retried_later(tmp_path, bundles):
    keys, (v1, _), (v2, sha2), _ = bundles
    events: list[ModelEvent] = []
    body = v2.read_bytes()
    step = len(body) // 5
    with flaky_range_server(body, TOKEN, cut_at=step, fail_first=2) as (url, ranges):
        mm = ModelManager(
            "a1",
            tmp_path,
            lambda: create_backend("openvino", "CPU", "FP32"),
            keys.public,
            hub_token=TOKEN,
            hub_url=url,
            publish_event=events.append,
            download_attempts=2,
            retry_backoff_s=0.01,
            redownload_after_s=0.2,
        )
        mm.install_bundle(v1)
        mm.start()  # the worker retries after redownload_after_s
        mm.submit(desired(url, "/b/2", sha2, "2.0.0"))
        assert wait_until(lambda: mm.active is not None and mm.active.version == "2.0.0", 20)
    failed = [e for e in events if e.event is ModelEventKind.FAILED]
    assert len(failed) == 1 and "after 2 tries" in failed[0].detail and "retrying in" in failed[0].detail
    assert ranges[0] is None and all(r == f"bytes={step}-" for r in ranges[1:])
    assert kinds(events)[-1] == "activated"
    mm.close()
