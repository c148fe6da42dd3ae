"""The pipeline hands each classified image's evidence and specimen id on with its result.

A real agent (OpenVINO, no MQTT) classifies watch-folder files: every committed result has its
evidence in the outbox's evidence queue under the result's ``image_sha256`` (the original bytes in
mode ``original``, a JPEG within ``preview_max_side`` in mode ``preview``, nothing in ``none``), and
the specimen id the ``specimen.pattern`` reads from the file name.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.agents.helpers import BLUE, RED, make_bundle, make_keys, wait_until, write_png
from tests.agents.test_pipeline import Offline, config


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles")
    keys = make_keys(folder)
    return keys, make_bundle(folder, keys, "1.0.0")[0]


def _run(tmp_path, bundle, mode: str, names: list[str]):
    keys, path = bundle
    cfg = config(tmp_path, keys, initial_model=path, evidence={"mode": mode, "preview_max_side": 64})
    cfg.watch_dir.mkdir(parents=True)
    files = {n: write_png(cfg.watch_dir / n, RED if i % 2 else BLUE, seed=i) for i, n in enumerate(names)}
    data = {n: p.read_bytes() for n, p in files.items()}
    agent = Offline(cfg)
    try:
        wait_until(lambda: len(agent.rows()) == len(names), timeout=60)
        results = agent.rows()
        queue = agent.agent.outbox.evidence_queue
        queued = []
        if queue is not None:
            exclude: set[int] = set()
            while (row := queue.next_due(float("inf"), exclude)) is not None:
                queued.append(row.evidence)
                exclude.add(row.seq)
        return results, queued, data
    finally:
        agent.stop()


@pytest.mark.parametrize("mode", ["original", "preview"])
def test_every_result_has_its_evidence_and_specimen(tmp_path, bundle, mode):
    names = ["ACC-17_field1.png", "ACC-17_field2.png", "ACC-18_field1.png"]
    results, queued, data = _run(tmp_path, bundle, mode, names)
    by_key = {e.sha256: e for e in queued}
    assert {r.image_sha256 for r in results} == set(by_key)
    for r in results:
        assert r.specimen_id == r.image_name.split("_")[0]
        ev = by_key[r.image_sha256]
        assert ev.kind == mode
        if mode == "original":
            assert ev.body == data[r.image_name]
        else:
            img = cv2.imdecode(np.frombuffer(ev.body, np.uint8), cv2.IMREAD_COLOR)
            assert img is not None and max(img.shape[:2]) <= 64


def test_mode_none_sends_no_evidence_but_the_results(tmp_path, bundle):
    results, queued, _ = _run(tmp_path, bundle, "none", ["S1_a.png", "S2_b.png"])
    assert len(results) == 2 and queued == []
    assert sorted(r.specimen_id for r in results) == ["S1", "S2"]
