"""Hostile cells lists on the ingest path: random ones (hypothesis) through the worker's validate /
write / acknowledge steps never break the loop, each message is acknowledged once, stored with its
exact cells or counted by the reason parse and admission give; and a live worker against a real
Mosquitto stores the good fields around hostile and oversized ones and goes on."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.db.migrate import upgrade
from hub.db.models import Classification, ModelVersion, ResultCell
from hub.db.session import Database
from hub.ingest import IngestStats, IngestWorker
from hub.ingest.admission import Admission
from hub.ingest.committer import Committer
from hub.ingest.writer import IngestWriter
from shared import topics
from shared.schemas import ClassificationResult, PayloadError, parse_payload
from tests.conftest import wait_until
from tests.hub.cells_results import LABELS, count, incoming, make_cell, make_field_result, sqlite_db
from tests.hub.conftest import as_json, hub_config, publish_all

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
labels = st.sampled_from(["ALL", "normal", "", "AML", "x" * 65, "ALL\u202e", "A\x00"])
hostile_cell = st.fixed_dictionaries(
    {
        "box": st.one_of(
            st.lists(st.integers(-5, 1_200_000), min_size=4, max_size=4),
            st.lists(st.integers(0, 3000), min_size=0, max_size=6),
            st.just("0,0,1,1"),
        ),
        "label": labels,
        "confidence": st.one_of(finite, st.just("0.5")),
        "probabilities": st.dictionaries(labels, st.one_of(finite, st.floats(0, 1)), max_size=4),
    },
    optional={
        "unfamiliar": st.one_of(st.booleans(), st.just("yes")),
        "ood_score": st.one_of(finite, st.none()),
    },
)
valid_cell = st.builds(
    lambda x, y, side, p, unfamiliar: make_cell(x, y, p, side=side, unfamiliar=unfamiliar).model_dump(
        mode="json"
    ),
    st.integers(0, 2592),
    st.integers(0, 1944),
    st.integers(1, 400),
    st.floats(0, 1),
    st.booleans(),
)
# valid for the schema, but labelled with a label the registered model does not have
foreign_cell = st.builds(
    lambda x, p: {
        "box": [x, x, 50, 50],
        "label": "AML",
        "confidence": p,
        "probabilities": {"AML": p, "ALL": 1 - p},
    },
    st.integers(0, 2000),
    st.floats(0, 1),
)
cells_lists = st.one_of(
    st.lists(st.one_of(valid_cell, valid_cell, hostile_cell, foreign_cell), max_size=12),
    st.lists(st.one_of(valid_cell, foreign_cell), min_size=1, max_size=6),
    st.lists(valid_cell, min_size=250, max_size=300),  # around MAX_CELLS
    st.just("not a list"),
    st.none(),
)
payload_shapes = st.fixed_dictionaries(
    {
        "cells": cells_lists,
        "input_kind": st.sampled_from(["field", "field", "cell", "smear", None]),
        "schema_version": st.sampled_from([3, 3, 3, 2]),
        "encoding": st.sampled_from(["json", "json", "json", "nan", "truncated", "padded"]),
    }
)


def hostile_payload(shape: dict[str, Any]) -> bytes:
    base = make_field_result(agent_id="fuzz").model_dump(mode="json")
    base.update(
        result_id=str(uuid.uuid4()),
        cells=shape["cells"],
        input_kind=shape["input_kind"],
        schema_version=shape["schema_version"],
    )
    if shape["encoding"] == "nan" and isinstance(base["cells"], list) and base["cells"]:
        base["cells"][0] = {**base["cells"][0], "confidence": float("nan")}
    text = json.dumps(base)
    if shape["encoding"] == "truncated":
        text = text[: len(text) // 2]
    elif shape["encoding"] == "padded":
        text = text[:-1] + ', "image_name_pad": "' + "p" * 100_000 + '"}'
    return text.encode()


def expected_reason(payload: bytes) -> str | None:
    """What ingest must do with ``payload``: None (store it) or the reason it is refused."""
    try:
        message = parse_payload(topics.Kind.RESULTS, payload)
    except PayloadError as exc:
        return exc.reason.value
    assert isinstance(message, ClassificationResult)
    fits = all(
        set(p) == set(LABELS)
        for p in [message.probabilities, *(c.probabilities for c in message.cells or [])]
    )
    return None if fits else "labels_mismatch"


def test_hostile_cells_lists_never_break_the_loop_and_are_counted_by_reason(tmp_path):
    db = sqlite_db(tmp_path)
    with db.transaction() as s:  # the registry holds the model: admission checks every cell's labels
        s.add(
            ModelVersion(
                name="leuko",
                version="1.0.0",
                sha256="c" * 64,
                manifest={"labels": LABELS},
                storage_path="cc/x.zip",
                size_bytes=1,
                uploaded_by="test",
            )
        )
    stats = IngestStats()
    acked: list[int] = []
    committer = Committer(
        IngestWriter(db, Admission(auto_register=True)),
        stats,
        lambda items: acked.extend(i.mid for i in items),
        None,
        threading.Event(),
    )
    expected: Counter[str] = Counter()
    expected_cells = [0]
    mids = iter(range(10**9))

    @given(st.lists(payload_shapes, min_size=1, max_size=6))
    @settings(
        max_examples=80,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(shapes: list[dict[str, Any]]) -> None:
        batch = [incoming("fuzz", hostile_payload(shape), next(mids)) for shape in shapes]
        for item in batch:
            reason = expected_reason(item.payload)
            expected[reason or "stored"] += 1
            if reason is None:
                expected_cells[0] += len(json.loads(item.payload)["cells"] or [])
        items, messages = committer.validate(batch)
        if items:
            committer.flush(items, messages)
        assert sorted(acked[-len(batch) :]) == [i.mid for i in batch]  # each acknowledged, once

    try:
        run()
        assert len(acked) == len(set(acked)) == sum(expected.values())
        assert stats.stored == expected.pop("stored", 0) == count(db, Classification)
        assert stats.invalid == expected
        # the run reached every outcome (else the strategies need another look)
        assert set(expected) == {"schema", "bad_json", "too_large", "labels_mismatch"}
        assert count(db, ResultCell) == expected_cells[0]
        assert stats.db_errors == 0
    finally:
        db.dispose()


def test_a_live_worker_stores_fields_and_survives_hostile_ones(tmp_path, private_broker):
    """Against a real Mosquitto: a field, its redelivery, hostile cells and an oversized field around
    it; the worker stores the good ones with their cells, counts the rest, and goes on."""
    cfg = hub_config(
        tmp_path,
        None,
        mqtt={"host": "127.0.0.1", "port": private_broker.port, "client_id": f"cells-{uuid.uuid4().hex[:8]}"},
        ingest={"batch_size": 10, "batch_ms": 50},
    )
    db = Database(cfg.db_url)
    upgrade(db)
    worker = IngestWorker(cfg, db, IngestStats())
    worker.start()
    try:
        assert worker.wait_connected(10)
        topic = topics.build("live-1", topics.Kind.RESULTS)
        field = make_field_result(agent_id="live-1")
        bad_box = field.model_dump(mode="json") | {"result_id": str(uuid.uuid4())}
        bad_box["cells"][0]["box"] = [-1, 0, 10, 10]
        not_a_field = field.model_dump(mode="json") | {"result_id": str(uuid.uuid4()), "input_kind": "cell"}
        huge = make_field_result(agent_id="live-1", cells=[make_cell(i, i, 0.5) for i in range(256)])
        oversized = huge.model_dump(mode="json") | {"image_name": "x" * 100_000}
        after = make_field_result(agent_id="live-1", cells=[make_cell(3, 3, 0.99)])
        publish_all(
            private_broker.port,
            [
                (topic, as_json(field), False),
                (topic, as_json(field), False),
                (topic, json.dumps(bad_box).encode(), False),
                (topic, json.dumps(not_a_field).encode(), False),
                (topic, json.dumps(oversized).encode(), False),
                (topic, as_json(huge), False),
                (topic, as_json(after), False),
            ],
        )
        wait_until(lambda: worker.stats.stored == 3, timeout=15, what="the three valid fields stored")
        wait_until(lambda: sum(worker.stats.invalid.values()) == 3, timeout=15, what="three refused")
        assert worker.stats.invalid == Counter({"schema": 2, "too_large": 1})
        assert worker.stats.duplicates == 1
        assert count(db, ResultCell) == 3 + 256 + 1
    finally:
        worker.stop()
        db.dispose()
