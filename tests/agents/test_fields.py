"""Fields analysed cell by cell in the agent's pipeline (fake backend): the cells, their counts and the
field's decision in the result; fields without cells; kinds a model refuses; a model swap while a
field is in inference; a crop whose inference fails; arbitrary images.

Fields are painted: plasma, pink red cells, and white cells made of a dark purple nucleus (what the
finder looks for) in a blue or a red cytoplasm disc. The fake backend scores a crop by its blue
minus red, so a cell in blue cytoplasm is ``ALL`` and one in red cytoplasm is ``normal``.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.backends import Backend, BackendError, DoneFn, create_backend
from agents.backends.fake import FakeBackend
from agents.config import OutboxConfig, PipelineConfig
from agents.jobs import Job, Outcome, OutcomeKind
from agents.models import ModelManager
from agents.outbox import Outbox
from agents.pipeline import Pipeline
from agents.vitals import InferenceStats
from shared.bundle import (
    Manifest,
    TensorSpec,
    build_bundle,
    digest_files,
    load_private_key,
    load_public_key,
    verify_bundle,
)
from shared.cells.finder import find_cells
from shared.cells.spec import CellAnalysisSpec, DecisionRule, FinderSpec, InputKind, OodSpec
from shared.preprocessing import PreprocessingSpec
from shared.schemas import ClassificationResult
from tests.agents.helpers import BLUE, SIZE, Keys, build_ir, image, make_keys, wait_until

LABELS = ["ALL", "normal"]
PLASMA = (220, 215, 235)
RED_CELL = (200, 170, 225)
NUCLEUS = (140, 50, 110)
BLUE_CYTO = (245, 200, 140)
RED_CYTO = (150, 170, 245)
CYTO_RADIUS = 85
FIELD_W, FIELD_H = 1200, 900
RULE = DecisionRule(kind="any", positive_labels=["ALL"], negative_label="normal", threshold=0.5)

Cell = tuple[int, int, tuple[int, int, int]]  # centre x, y and cytoplasm colour


def paint_field(
    cells: Sequence[Cell], width: int = FIELD_W, height: int = FIELD_H, seed: int = 0
) -> np.ndarray:
    """A ``width`` x ``height`` BGR field with a white cell (nucleus radius 32) at each of ``cells``
    and red cells (150 per 1200 x 900) around them."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.int16) + np.array(PLASMA, np.int16)
    for _ in range(int(150 * width * height / (1200 * 900))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        if all((x - cx) ** 2 + (y - cy) ** 2 > (CYTO_RADIUS + 40) ** 2 for cx, cy, _ in cells):
            cv2.circle(img, (x, y), 22, RED_CELL, -1)
    for x, y, cyto in cells:
        cv2.circle(img, (x, y), CYTO_RADIUS, cyto, -1)
        cv2.circle(img, (x, y), 32, NUCLEUS, -1)
    img += rng.integers(-6, 7, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


MIXED = [(200, 200, BLUE_CYTO), (600, 250, RED_CYTO), (1000, 220, BLUE_CYTO), (400, 650, RED_CYTO)]
NORMAL = [(200, 200, RED_CYTO), (600, 250, RED_CYTO), (1000, 600, RED_CYTO)]


# --- bundles ---------------------------------------------------------------------------------------


def cells_spec(
    kinds: Sequence[InputKind] = (InputKind.CELL, InputKind.FIELD), **finder: Any
) -> CellAnalysisSpec:
    return CellAnalysisSpec(input_kinds=list(kinds), finder=FinderSpec(**finder), decision=RULE)


def make_cells_bundle(
    folder: Path,
    keys: Keys,
    version: str = "1.0.0",
    labels: Sequence[str] = LABELS,
    cells: CellAnalysisSpec | None = None,
    ood: OodSpec | None = None,
    stats: bytes | None = None,
    src_files: dict[str, Path] | None = None,
) -> Path:
    """A signed bundle with a ``cells`` section (``cells``, default: cells and fields) and optionally an
    ``ood`` section whose statistics file holds ``stats``. The IR is the tiny one of
    :mod:`tests.agents.helpers` unless ``src_files`` gives ``ir_fp32``/``ir_fp16`` XML files to copy."""
    src = folder / f"src-{version}-{len(list(folder.iterdir()))}"
    if src_files is None:
        build_ir(src / "ir/fp32/model.xml")
        build_ir(src / "ir/fp16/model.xml", fp16=True)
    else:
        for role, xml in src_files.items():
            sub = "fp32" if role == "ir_fp32" else "fp16"
            (src / "ir" / sub).mkdir(parents=True, exist_ok=True)
            for suffix in (".xml", ".bin"):
                (src / "ir" / sub / f"model{suffix}").write_bytes(xml.with_suffix(suffix).read_bytes())
    files = ["ir/fp32/model.xml", "ir/fp32/model.bin", "ir/fp16/model.xml", "ir/fp16/model.bin"]
    if ood is not None:
        assert stats is not None
        (src / ood.stats_file).parent.mkdir(parents=True, exist_ok=True)
        (src / ood.stats_file).write_bytes(stats)
        files.append(ood.stats_file)
    manifest = Manifest(
        name="leukonet-cells",
        version=version,
        labels=list(labels),
        input=TensorSpec(name="input", shape=[1, SIZE, SIZE, 3], dtype="uint8", layout="NHWC"),
        output=TensorSpec(name="probabilities", shape=[1, len(labels)], dtype="float32"),
        preprocessing=PreprocessingSpec(image_size=SIZE),
        artifacts={"ir_fp32": "ir/fp32/model.xml", "ir_fp16": "ir/fp16/model.xml"},
        files=digest_files(src, files),
        cells=cells if cells is not None else cells_spec(),
        ood=ood,
    )
    out = folder / f"leukonet-cells-{version}-{src.name}.zip"
    build_bundle(src, manifest, load_private_key(keys.private), out)
    return out


# --- an in-process pipeline ----------------------------------------------------------------------


@dataclass
class Outcomes:
    """Collects ``on_done`` calls by job name."""

    got: dict[str, list[Outcome]] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def hook(self, name: str):
        def on_done(outcome: Outcome) -> None:
            with self.cond:
                self.got.setdefault(name, []).append(outcome)
                self.cond.notify_all()

        return on_done

    def wait(self, names: Sequence[str], timeout: float = 30.0) -> dict[str, Outcome]:
        with self.cond:
            assert self.cond.wait_for(lambda: all(n in self.got for n in names), timeout), (names, self.got)
            assert all(len(self.got[n]) == 1 for n in names), "an on_done was called twice"
            return {n: self.got[n][0] for n in names}


class Rig:
    """A model manager, an outbox and a started pipeline in ``folder``."""

    def __init__(self, folder: Path, keys: Keys, bundle: Path, make_backend=None, **pipeline: Any) -> None:
        self.models = ModelManager(
            "fields", folder, make_backend or (lambda: create_backend("fake")), keys.public
        )
        self.models.install_bundle(bundle)
        self.outbox = Outbox(folder / "outbox.sqlite3")
        self.stats = InferenceStats()
        self.pipeline = Pipeline(
            "fields",
            "lab",
            0.8,
            self.models,
            self.outbox,
            self.stats,
            PipelineConfig(**pipeline),
            OutboxConfig(),
            folder,
        )
        self.pipeline.start()
        self.outcomes = Outcomes()

    def submit(self, name: str, frame: np.ndarray | None = None, data: bytes | None = None) -> None:
        job = Job(name=name, frame=frame, data=data, on_done=self.outcomes.hook(name))
        assert self.pipeline.submit(job, timeout=30)

    def run(self, images: dict[str, np.ndarray], timeout: float = 60.0) -> dict[str, Outcome]:
        for name, img in images.items():
            self.submit(name, frame=img)
        return self.outcomes.wait(list(images), timeout)

    def rows(self) -> list[ClassificationResult]:
        return [ClassificationResult.model_validate_json(r.payload) for r in self.outbox.after(0, 10_000)]

    def close(self) -> None:
        self.pipeline.close()
        self.models.close()
        self.outbox.close()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def rig(tmp_path: Path, keys: Keys) -> Iterator[Rig]:
    r = Rig(tmp_path / "state", keys, make_cells_bundle(tmp_path, keys))
    yield r
    r.close()


# --- the field path ------------------------------------------------------------------------------


def test_a_field_reports_its_cells_counts_and_decision(rig: Rig):
    img = paint_field(MIXED)
    got = rig.run({"mixed.png": img, "normal.png": paint_field(NORMAL, seed=1)})
    mixed, normal = got["mixed.png"].result, got["normal.png"].result
    assert got["mixed.png"].kind is OutcomeKind.CLASSIFIED and mixed is not None and normal is not None
    assert mixed.input_kind is InputKind.FIELD and mixed.schema_version == 3
    found = find_cells(img, FinderSpec())
    assert mixed.cells is not None and [c.box for c in mixed.cells] == [f.box for f in found]
    by_x = {c.box[0] + c.box[2] // 2: c.label for c in mixed.cells}
    assert [by_x[x] for x in sorted(by_x)] == ["ALL", "normal", "normal", "ALL"]  # x 200, 400, 600, 1000
    assert mixed.cell_counts == {"ALL": 2, "normal": 2}
    assert mixed.decision_rule == RULE.describe()
    assert mixed.label == "ALL" and mixed.confidence == max(c.probabilities["ALL"] for c in mixed.cells)
    assert not mixed.low_confidence and not mixed.unfamiliar and mixed.ood_score is None
    assert normal.label == "normal" and normal.cell_counts == {"ALL": 0, "normal": 3}
    assert normal.confidence == pytest.approx(1 - max(c.probabilities["ALL"] for c in normal.cells or []))
    assert not normal.low_confidence
    t = mixed.timings
    assert t.preprocess_ms > 0 and t.inference_ms >= 0 and t.total_ms >= t.decode_ms + t.preprocess_ms
    assert {r.image_name for r in rig.rows()} == {"mixed.png", "normal.png"}
    assert rig.pipeline.analysis() == {"fields": 2, "cells": 7, "unfamiliar": 0}
    assert rig.stats.total == 2  # a field is one image
    assert rig.models.active is not None and rig.models.active.users == 0


def test_a_field_from_file_bytes_is_decoded_and_analysed(rig: Rig):
    ok, png = cv2.imencode(".png", paint_field(MIXED))
    assert ok
    rig.submit("bytes.png", data=png.tobytes())
    result = rig.outcomes.wait(["bytes.png"])["bytes.png"].result
    assert result is not None and result.input_kind is InputKind.FIELD and len(result.cells or []) == 4
    assert result.timings.decode_ms > 0


def test_a_field_without_cells_is_never_a_confident_negative(rig: Rig):
    result = rig.run({"empty.png": paint_field([])})["empty.png"].result
    assert result is not None and result.input_kind is InputKind.FIELD
    assert result.cells == [] and result.cell_counts == {"ALL": 0, "normal": 0}
    assert result.label == "normal" and result.confidence == 0.0 and result.low_confidence
    assert rig.pipeline.analysis() == {"fields": 1, "cells": 0, "unfamiliar": 0}


def test_a_single_cell_image_runs_whole_with_its_kind(rig: Rig):
    result = rig.run({"cell.png": image(BLUE, 257, 257)})["cell.png"].result
    assert result is not None and result.input_kind is InputKind.CELL and result.cells is None
    assert result.label == "ALL" and result.cell_counts is None and result.decision_rule is None


def test_a_model_without_cells_section_classifies_whole_images_as_before(tmp_path: Path, keys: Keys):
    from tests.agents.helpers import make_bundle

    bundle, _ = make_bundle(tmp_path, keys, reference=False)
    r = Rig(tmp_path / "state", keys, bundle)
    try:
        result = r.run({"big.png": paint_field(MIXED)})["big.png"].result
    finally:
        r.close()
    assert result is not None and result.input_kind is None and result.cells is None
    assert not result.unfamiliar and result.ood_score is None
    assert ClassificationResult.model_validate_json(result.to_json()) == result


@pytest.mark.parametrize(
    ("accepts", "name", "img", "says"),
    [
        (InputKind.FIELD, "small.png", image(BLUE, 300, 200), "200x300"),
        (InputKind.CELL, "field.png", paint_field(MIXED), "1200x900"),
    ],
)
def test_a_kind_the_model_does_not_accept_is_a_bad_image_that_says_why(
    tmp_path: Path, keys: Keys, accepts: InputKind, name: str, img: np.ndarray, says: str
):
    bundle = make_cells_bundle(tmp_path, keys, cells=cells_spec([accepts]))
    r = Rig(tmp_path / "state", keys, bundle)
    try:
        outcome = r.run({name: img})[name]
        assert r.outbox.depth() == 0
        assert r.models.active is not None and r.models.active.users == 0
    finally:
        r.close()
    assert outcome.kind is OutcomeKind.BAD_IMAGE
    assert name in outcome.error and says in outcome.error
    assert f"accepts {accepts.value} images only" in outcome.error


def test_a_field_over_max_cells_classifies_the_largest(tmp_path: Path, keys: Keys):
    bundle = make_cells_bundle(tmp_path, keys, cells=cells_spec(max_cells=2))
    r = Rig(tmp_path / "state", keys, bundle)
    img = paint_field(MIXED)
    cv2.circle(img, (1000, 220), 44, NUCLEUS, -1)  # the two nuclei on the right are the largest
    cv2.circle(img, (600, 250), 40, NUCLEUS, -1)
    try:
        result = r.run({"crowded.png": img})["crowded.png"].result
    finally:
        r.close()
    assert result is not None and result.cells is not None and len(result.cells) == 2
    assert sorted(round((c.box[0] + c.box[2] / 2) / 100) * 100 for c in result.cells) == [600, 1000]
    assert sum((result.cell_counts or {}).values()) == 2


# --- backends that misbehave --------------------------------------------------------------------


class GatedBackend(FakeBackend):
    """A fake backend whose crops wait for ``release`` on their own threads (an async device)."""

    release = threading.Event()
    submitted = threading.Semaphore(0)
    closed: list[str] = []

    def load(self, model_dir: Path, manifest: Manifest) -> None:
        super().load(model_dir, manifest)
        self.version = manifest.version

    def submit(self, image_uint8_bgr: np.ndarray, done: DoneFn) -> None:
        def later() -> None:
            self.release.wait(30)
            Backend.submit(self, image_uint8_bgr, done)

        threading.Thread(target=later, daemon=True).start()
        self.submitted.release()

    def close(self) -> None:
        self.closed.append(self.version)
        super().close()


def test_a_model_swap_mid_field_classifies_the_whole_field_with_one_model(tmp_path: Path, keys: Keys):
    v1 = make_cells_bundle(tmp_path, keys, "1.0.0")
    v2 = make_cells_bundle(tmp_path, keys, "2.0.0", labels=["normal", "ALL"])  # colours map the other way
    GatedBackend.release.clear()
    r = Rig(tmp_path / "state", keys, v1, make_backend=GatedBackend)
    try:
        r.submit("during.png", frame=paint_field(MIXED))
        for _ in range(4):  # every crop of the field is in flight on v1
            assert GatedBackend.submitted.acquire(timeout=30)
        swap = threading.Thread(target=r.models.install_bundle, args=(v2,))
        swap.start()
        assert wait_until(lambda: r.models.active is not None and r.models.active.version == "2.0.0")
        assert GatedBackend.closed == []  # the old backend waits for the field
        GatedBackend.release.set()
        swap.join(30)
        assert GatedBackend.closed == ["1.0.0"]
        r.submit("after.png", frame=paint_field(MIXED))
        got = r.outcomes.wait(["during.png", "after.png"])
    finally:
        GatedBackend.release.set()
        r.close()
    during, after = got["during.png"].result, got["after.png"].result
    assert during is not None and after is not None
    assert during.model_version == "1.0.0" and after.model_version == "2.0.0"
    by_x = {c.box[0]: c.label for c in during.cells or []}
    assert [by_x[x] for x in sorted(by_x)] == ["ALL", "normal", "normal", "ALL"]  # every crop on v1
    assert after.cell_counts == {"ALL": 2, "normal": 2} and after.probabilities.keys() == {"ALL", "normal"}
    assert [c.label for c in during.cells or []] != [
        c.label for c in after.cells or []
    ]  # v2 maps the other way


class FailingBackend(FakeBackend):
    """Fails the inference of the ``fail_at``-th crop it is given (or refuses to take it)."""

    fail_at = 2
    refuse = False

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)
        self.count = 0

    def submit(self, image_uint8_bgr: np.ndarray, done: DoneFn) -> None:
        self.count += 1
        if self.count == self.fail_at:
            if self.refuse:
                raise BackendError("device lost")
            done(None, 1.0, BackendError("crop inference failed on the device"))
            return
        super().submit(image_uint8_bgr, done)


@pytest.mark.parametrize("refuse", [False, True])
def test_a_crop_that_fails_fails_the_field_like_an_image(tmp_path: Path, keys: Keys, refuse: bool):
    FailingBackend.refuse = refuse
    r = Rig(tmp_path / "state", keys, make_cells_bundle(tmp_path, keys), make_backend=FailingBackend)
    r.pipeline.error_backoff_s = 30.0
    try:
        outcome = r.run({"field.png": paint_field(MIXED)})["field.png"]
        assert r.outbox.depth() == 0
        assert r.models.active is not None and r.models.active.users == 0
        assert "inference failed" in r.pipeline.blocked_reason()
        # the backend works again: the same field goes through
        again = r.run({"again.png": paint_field(MIXED)})["again.png"]
    finally:
        r.close()
    assert outcome.kind is OutcomeKind.UNAVAILABLE
    assert ("device lost" if refuse else "crop inference failed") in outcome.error
    assert again.kind is OutcomeKind.CLASSIFIED


# --- hostile images ------------------------------------------------------------------------------

PATTERNS = ("noise", "flat", "stripes", "blobs", "cells")
EXAMPLES = itertools.count()


def hostile(pattern: str, w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if pattern == "noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if pattern == "flat":
        return np.full((h, w, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    if pattern == "stripes":
        img = np.zeros((h, w, 3), np.uint8)
        img[:, :: int(rng.integers(2, 40))] = rng.integers(0, 256, 3)
        return img
    if pattern == "blobs":
        img = np.full((h, w, 3), PLASMA, np.uint8)
        for _ in range(int(rng.integers(1, 400))):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(img, centre, int(rng.integers(2, 90)), NUCLEUS, -1)
        return img
    cells = [
        (int(rng.integers(0, w)), int(rng.integers(0, h)), BLUE_CYTO) for _ in range(int(rng.integers(0, 30)))
    ]
    return paint_field(cells, w, h, seed)


@pytest.fixture(scope="module")
def module_rig(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Rig]:
    folder = tmp_path_factory.mktemp("hostile")
    r = Rig(folder / "state", keys, make_cells_bundle(folder, keys, cells=cells_spec(max_cells=64)))
    yield r
    r.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pattern=st.sampled_from(PATTERNS),
    w=st.integers(640, 1400),
    h=st.integers(1, 1000),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(["uint8", "uint8", "uint8", "uint16", "float32", "gray"]),
)
def test_the_field_path_survives_arbitrary_images(
    module_rig: Rig, pattern: str, w: int, h: int, seed: int, dtype: str
):
    img = hostile(pattern, w, h, seed)
    if dtype == "gray":
        img = img[..., 0]
    elif dtype != "uint8":
        img = img.astype(dtype)
    name = f"{next(EXAMPLES)}-{pattern}-{w}x{h}-{dtype}.png"
    outcome = module_rig.run({name: img})[name]
    if dtype != "uint8":
        assert outcome.kind is OutcomeKind.BAD_IMAGE and name in outcome.error
        return
    assert outcome.kind is OutcomeKind.CLASSIFIED, outcome.error
    result = outcome.result
    assert result is not None and result.input_kind is InputKind.FIELD
    assert ClassificationResult.model_validate_json(result.to_json()) == result
    cells = result.cells or []
    assert len(cells) <= 64 and sum((result.cell_counts or {}).values()) == len(cells)
    assert all(x + bw <= w and y + bh <= h for x, y, bw, bh in (c.box for c in cells))
    if not cells:
        assert result.low_confidence and result.confidence == 0.0


# --- results that would not fit one payload ---------------------------------------------------------


def test_a_field_result_too_large_for_one_payload_is_reduced_to_fit(tmp_path: Path, keys: Keys):
    from agents.backends import Inference
    from agents.cells.field_result import field_fields, fit_payload
    from shared.schemas import MAX_CELLS, MAX_PAYLOAD_BYTES, Timings
    from shared.topics import Kind

    labels = [f"{i:02d}-{'x' * 61}" for i in range(64)]  # 64 labels of 64 characters: the schema's most
    rule = DecisionRule(positive_labels=[labels[0]], negative_label=labels[1])
    spec = CellAnalysisSpec(decision=rule)
    bundle = make_cells_bundle(tmp_path, keys, labels=labels, cells=spec)
    manifest = verify_bundle(bundle, load_public_key(keys.public), tmp_path / "m")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(MAX_CELLS, len(labels)))
    logits[:5, 0] += 12  # five cells are clearly ALL: they must stay in the reduced result
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    boxes = [(i * 10, i * 5, 40, 40) for i in range(MAX_CELLS)]
    fields = field_fields(manifest, boxes, [Inference(p.astype(np.float32)) for p in probs], None, 0.8)
    full = ClassificationResult(
        agent_id="fields",
        image_name="crowded.png",
        image_sha256="0" * 64,
        model_name=manifest.name,
        model_version=manifest.version,
        timings=Timings(decode_ms=1, preprocess_ms=1, inference_ms=1, total_ms=3),
        **fields,
    )
    limit = MAX_PAYLOAD_BYTES[Kind.RESULTS]
    assert len(full.to_json()) > limit
    fitted = fit_payload(full, manifest)
    assert len(fitted.to_json()) <= limit
    assert ClassificationResult.model_validate_json(fitted.to_json()) == fitted
    assert fitted.cell_counts == full.cell_counts and sum(fitted.cell_counts.values()) == MAX_CELLS
    assert (fitted.label, fitted.confidence, fitted.probabilities) == (
        full.label,
        full.confidence,
        full.probabilities,
    )
    kept = {c.box for c in fitted.cells or []}
    assert {boxes[i] for i in range(5)} <= kept and 5 <= len(kept) < MAX_CELLS  # the strongest kept
    for cell in fitted.cells or []:
        assert set(cell.probabilities) <= {labels[0], labels[1], cell.label}


def test_the_metrics_count_fields_cells_and_unfamiliar_results(rig: Rig):
    from agents.metrics import AgentCollector
    from shared.loops import Loops

    rig.run(
        {"a.png": paint_field(MIXED), "b.png": paint_field(NORMAL, seed=1), "c.png": image(BLUE, 257, 257)}
    )
    collector = AgentCollector(
        "fields",
        "lab",
        rig.outbox.path.parent,
        rig.pipeline,
        rig.stats,
        rig.outbox,
        100,
        rig.models,
        Loops(),
        None,
    )
    values = {s.name: s.value for m in collector.collect() for s in m.samples}
    assert values["leukonet_agent_fields_total"] == 2
    assert values["leukonet_agent_cells_classified_total"] == 7
    assert values["leukonet_agent_unfamiliar_results_total"] == 0
    assert values["leukonet_agent_images_classified_total"] == 3


def test_classify_offline_analyses_a_field_cell_by_cell_as_the_agent_does(tmp_path: Path, keys: Keys):
    from click.testing import CliRunner

    from agents.cli import cli

    bundle = make_cells_bundle(tmp_path, keys, cells=cells_spec())
    field = tmp_path / "mixed.png"
    cv2.imwrite(str(field), paint_field(MIXED))
    res = CliRunner().invoke(
        cli,
        [
            "classify",
            "--bundle",
            str(bundle),
            "--public-key",
            str(keys.public),
            "--device",
            "CPU",
            str(field),
        ],
    )
    assert res.exit_code == 0, res.output
    line = json.loads(res.output.splitlines()[-1])
    assert line["input_kind"] == "field" and line["label"] == "ALL"
    assert line["cell_counts"] == {"ALL": 2, "normal": 2} and len(line["cells"]) == 4
