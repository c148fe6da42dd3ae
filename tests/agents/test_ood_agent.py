"""The unfamiliar (out-of-distribution) flag on the agent: statistics loaded with the model, every
image and every cell scored, a field flagged by the share of its unfamiliar cells, and an unfamiliar
negative never reported as confident. Most tests use the fake backend (its features are a fixed
projection of colour and texture statistics); one runs a generated field through a real OpenVINO IR
with a probabilities and a features output.

The OOD statistics are fitted (:func:`shared.ood.fit_ood`) on the features of crops of painted fields
with blue and red cells, and the threshold is calibrated on held-out fields' crops; cells of another
cytoplasm colour (orange) are what the model never saw.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.backends import Backend, BackendError, create_backend
from agents.backends.fake import FakeBackend
from agents.cells.prepare import prepare_field
from agents.cells.unfamiliar import field_flag
from agents.jobs import OutcomeKind
from agents.models import ModelError, ModelManager
from agents.models.ood import load_ood
from shared.bundle import Manifest, load_public_key, verify_bundle
from shared.cells.decision import decide
from shared.cells.finder import cut_crop, find_cells
from shared.cells.spec import FinderSpec, InputKind, OodSpec
from shared.ood import OodModel, calibrate, fit_ood
from shared.preprocessing import PreprocessingSpec, crop_and_resize
from shared.schemas import ClassificationResult
from tests.agents.helpers import BLUE, RED, SIZE, Keys, image, make_keys, weights
from tests.agents.test_fields import (
    BLUE_CYTO,
    RED_CYTO,
    RULE,
    Cell,
    Rig,
    cells_spec,
    make_cells_bundle,
    paint_field,
)

ORANGE_CYTO = (60, 200, 250)  # red-dominant (a confident "normal" to the fake backend), never trained on
FEATURE_DIM = 16
FRACTION = 0.5
#: The test threshold is this many times the calibrated one, so that no test hinges on one held-out
#: score (familiar cells score ~1-5, orange cells thousands).
MARGIN = 3.0


def field_cells(seed: int, cytos: Sequence[tuple[int, int, int]]) -> list[Cell]:
    rng = np.random.default_rng(seed)
    return [
        (int(170 + 280 * i + rng.integers(-30, 30)), int(rng.integers(150, 750)), cytos[i % len(cytos)])
        for i in range(4)
    ]


def training_crops(seeds: range) -> np.ndarray:
    spec = PreprocessingSpec(image_size=SIZE)
    crops = [
        prepare_field(paint_field(field_cells(s, (BLUE_CYTO, RED_CYTO)), seed=s), FinderSpec(), spec).crops
        for s in seeds
    ]
    return np.concatenate(crops)


def fitted(backend: Backend) -> tuple[OodModel, float]:
    """OOD statistics of ``backend``'s features on training crops, and the test threshold."""
    model = fit_ood(backend.run(training_crops(range(10))).features)
    held_out = backend.run(training_crops(range(100, 106))).features
    return model, MARGIN * calibrate(model, held_out, 0.05)


def ood_spec(threshold: float, dim: int = FEATURE_DIM) -> OodSpec:
    return OodSpec(
        stats_file="ood/stats.npz",
        feature_output="features",
        feature_dim=dim,
        threshold=threshold,
        target_flag_rate=0.05,
        field_unfamiliar_fraction=FRACTION,
    )


def stats_bytes(model: OodModel, folder: Path) -> bytes:
    return model.save(folder / "stats.npz").read_bytes()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def fake_ood(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> tuple[Path, OodModel, float]:
    """A fake-backend bundle with fitted OOD statistics: (bundle, model, threshold)."""
    folder = tmp_path_factory.mktemp("ood-bundle")
    probe = make_cells_bundle(folder, keys, ood=ood_spec(1.0), stats=b"unused by the probe")
    manifest = verify_bundle(probe, load_public_key(keys.public), folder / "probe")
    backend = FakeBackend()
    backend.load(folder / "probe", manifest)
    model, threshold = fitted(backend)
    bundle = make_cells_bundle(folder, keys, ood=ood_spec(threshold), stats=stats_bytes(model, folder))
    return bundle, model, threshold


@pytest.fixture
def rig(tmp_path: Path, keys: Keys, fake_ood: tuple[Path, OodModel, float]) -> Iterator[Rig]:
    r = Rig(tmp_path / "state", keys, fake_ood[0])
    yield r
    r.close()


def fake_scores(model: OodModel, crops: np.ndarray, folder: Path, keys: Keys, threshold: float) -> np.ndarray:
    probe = make_cells_bundle(folder, keys, ood=ood_spec(threshold), stats=b"x")
    backend = FakeBackend()
    backend.load(folder, verify_bundle(probe, load_public_key(keys.public), folder / "m"))
    return model.score(backend.run(crops).features)


# --- the fake backend's features ------------------------------------------------------------------


def test_fake_features_are_deterministic_and_only_with_an_ood_section(tmp_path: Path, keys: Keys):
    with_ood = make_cells_bundle(tmp_path, keys, ood=ood_spec(1.0), stats=b"s")
    without = make_cells_bundle(tmp_path, keys)
    key = load_public_key(keys.public)
    batch = np.stack([crop_and_resize(image(c, seed=i), SIZE) for i, c in enumerate([BLUE, RED, BLUE])])
    outs = []
    for i in range(2):
        b = FakeBackend()
        b.load(tmp_path, verify_bundle(with_ood, key, tmp_path / f"w{i}"))
        outs.append(b.run(batch))
    assert outs[0].features is not None and outs[0].features.shape == (3, FEATURE_DIM)
    assert outs[0].features.dtype == np.float32
    np.testing.assert_array_equal(outs[0].features, outs[1].features)
    assert not np.allclose(outs[0].features[0], outs[0].features[1])  # blue and red differ
    plain = FakeBackend()
    plain.load(tmp_path, verify_bundle(without, key, tmp_path / "p"))
    assert plain.run(batch).features is None
    np.testing.assert_array_equal(plain.infer(batch), outs[0].probabilities)


# --- single images ----------------------------------------------------------------------------------


def test_single_images_are_scored_and_an_unfamiliar_negative_is_never_confident(
    rig: Rig, fake_ood: tuple[Path, OodModel, float]
):
    _, _, threshold = fake_ood
    field = paint_field(field_cells(200, (RED_CYTO,)), seed=200)
    cell = find_cells(field, FinderSpec())[0]
    familiar = cut_crop(field, cell.centre, 257)
    got = rig.run({"cell.png": familiar, "red.png": image(RED, 257, 257), "blue.png": image(BLUE, 257, 257)})
    ok, red, blue = (got[n].result for n in ("cell.png", "red.png", "blue.png"))
    assert ok is not None and red is not None and blue is not None
    assert ok.input_kind is InputKind.CELL and not ok.unfamiliar
    assert ok.ood_score is not None and 0 <= ok.ood_score <= threshold
    assert ok.label == "normal" and not ok.low_confidence  # familiar and confident: reported as such
    # A flat red image: "normal" with a confidence near 1, but nothing like a cell: flagged, not confident.
    assert red.unfamiliar and red.ood_score is not None and red.ood_score > threshold
    assert red.label == "normal" and red.confidence > 0.99 and red.low_confidence
    # A flat blue one is unfamiliar too, but a positive keeps its confidence (it is reviewed anyway).
    assert blue.unfamiliar and blue.label == "ALL" and blue.confidence > 0.99 and not blue.low_confidence
    assert rig.pipeline.analysis()["unfamiliar"] == 2
    for r in (ok, red, blue):
        assert ClassificationResult.model_validate_json(r.to_json()) == r


# --- fields -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cytos", "strange"),
    [
        ("familiar", (RED_CYTO,), 0),
        ("one-of-four", (RED_CYTO, RED_CYTO, RED_CYTO, ORANGE_CYTO), 1),
        ("half", (RED_CYTO, ORANGE_CYTO), 2),
    ],
)
def test_a_field_is_unfamiliar_when_enough_of_its_cells_are(
    tmp_path: Path,
    rig: Rig,
    keys: Keys,
    fake_ood: tuple[Path, OodModel, float],
    name: str,
    cytos,
    strange: int,
):
    _, model, threshold = fake_ood
    img = paint_field(field_cells(300, cytos), seed=300)
    result = rig.run({name: img})[name].result
    assert result is not None and result.cells is not None and len(result.cells) == 4
    prepared = prepare_field(img, FinderSpec(), PreprocessingSpec(image_size=SIZE))
    expected = fake_scores(model, prepared.crops, tmp_path, keys, threshold)
    np.testing.assert_allclose([c.ood_score for c in result.cells], expected, rtol=1e-6)
    assert [c.unfamiliar for c in result.cells] == [bool(s > threshold) for s in expected]
    assert sum(c.unfamiliar for c in result.cells) == strange
    k = math.ceil(FRACTION * 4)
    assert result.ood_score == pytest.approx(np.sort(expected)[::-1][k - 1])
    assert result.unfamiliar == (strange >= FRACTION * 4)
    assert result.label == "normal" and result.confidence > 0.9  # every cell is red-dominant
    assert result.low_confidence == result.unfamiliar  # an unfamiliar negative field is never confident
    assert rig.pipeline.analysis() == {"fields": 1, "cells": 4, "unfamiliar": int(result.unfamiliar)}


def test_a_field_without_cells_has_no_score(rig: Rig):
    result = rig.run({"plasma.png": paint_field([])})["plasma.png"].result
    assert result is not None and result.cells == [] and result.ood_score is None and not result.unfamiliar
    assert result.low_confidence


@given(
    scores=st.lists(st.floats(0, 100) | st.just(math.inf), min_size=1, max_size=300),
    threshold=st.floats(0, 100),
    fraction=st.sampled_from([0.01, 0.1, 0.25, 0.3, 0.5, 0.7, 1.0]) | st.floats(0.001, 1.0),
)
def test_the_field_score_and_flag_never_disagree(scores: list[float], threshold: float, fraction: float):
    flagged, kth = field_flag(np.array(scores), threshold, fraction)
    n_unfamiliar = sum(s > threshold for s in scores)
    assert flagged == (n_unfamiliar >= fraction * len(scores) - 1e-9)  # "at least that share of the cells"
    assert flagged == (kth > threshold) and kth in scores


# --- statistics that cannot be used -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("stats", "dim", "says"),
    [
        (b"not an npz file at all", FEATURE_DIM, "not a readable .npz"),
        (None, FEATURE_DIM + 1, "feature_dim"),
    ],
)
def test_bad_ood_statistics_refuse_the_model(
    tmp_path: Path, keys: Keys, fake_ood: tuple[Path, OodModel, float], stats, dim: int, says: str
):
    _, model, threshold = fake_ood
    data = stats if stats is not None else stats_bytes(model, tmp_path)
    bundle = make_cells_bundle(tmp_path, keys, ood=ood_spec(threshold, dim), stats=data)
    mm = ModelManager("ood", tmp_path / "state", lambda: create_backend("fake"), keys.public)
    with pytest.raises(ModelError) as err:
        mm.install_bundle(bundle)
    assert "ood/stats.npz" in str(err.value) and says in str(err.value)
    assert "re-export" in str(err.value) and mm.active is None
    mm.close()


# --- a real OpenVINO IR with a features output ----------------------------------------------------------

PROJECTION = np.random.default_rng(5).standard_normal((6, FEATURE_DIM)).astype(np.float32)


def build_feature_ir(xml_path: Path, fp16: bool = False, dim: int = FEATURE_DIM) -> None:
    """The tiny IR of :mod:`tests.agents.helpers` plus a ``features`` output [1, dim]: tanh of a fixed
    projection of the channel means and standard deviations."""
    import openvino as ov
    import openvino.opset13 as ops

    param = ops.parameter([1, SIZE, SIZE, 3], ov.Type.u8, name="input")
    param.output(0).get_tensor().set_names({"input"})
    x = ops.convert(param, ov.Type.f32)
    axes = ops.constant(np.array([1, 2], dtype=np.int64))
    mean = ops.reduce_mean(x, axes, keep_dims=False)
    scaled = ops.subtract(ops.divide(mean, ops.constant(np.float32(127.5))), ops.constant(np.float32(1.0)))
    probs = ops.softmax(ops.matmul(scaled, ops.constant(weights(False)), False, False), 1)
    probs.output(0).get_tensor().set_names({"probabilities"})
    var = ops.subtract(ops.reduce_mean(ops.multiply(x, x), axes, keep_dims=False), ops.multiply(mean, mean))
    std = ops.divide(
        ops.sqrt(ops.maximum(var, ops.constant(np.float32(0.0)))), ops.constant(np.float32(127.5))
    )
    stats = ops.concat([scaled, std], 1)
    feats = ops.tanh(ops.matmul(stats, ops.constant(PROJECTION[:, :dim]), False, False))
    feats.output(0).get_tensor().set_names({"features"})
    model = ov.Model([probs, feats], [param], "tiny_features")
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=fp16)


@pytest.fixture(scope="module")
def feature_irs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("irs")
    build_feature_ir(folder / "fp32/model.xml")
    build_feature_ir(folder / "fp16/model.xml", fp16=True)
    return {"ir_fp32": folder / "fp32/model.xml", "ir_fp16": folder / "fp16/model.xml"}


def openvino() -> Backend:
    return create_backend("openvino", device="CPU", precision="FP32", performance_hint="THROUGHPUT")


def test_a_generated_field_through_a_real_openvino_ir_with_features(
    tmp_path: Path, keys: Keys, feature_irs: dict[str, Path]
):
    from trainer.fields import render_field

    key = load_public_key(keys.public)
    probe = make_cells_bundle(tmp_path, keys, ood=ood_spec(1.0), stats=b"x", src_files=feature_irs)
    backend = openvino()
    backend.load(tmp_path / "probe", verify_bundle(probe, key, tmp_path / "probe"))
    model, threshold = fitted(backend)
    bundle = make_cells_bundle(
        tmp_path, keys, ood=ood_spec(threshold), stats=stats_bytes(model, tmp_path), src_files=feature_irs
    )
    field, truth = render_field(np.random.default_rng(3), "ALL", 1296, 972, n_white=6)
    prepared = prepare_field(field, FinderSpec(), PreprocessingSpec(image_size=SIZE))
    reference = backend.run(prepared.crops)
    backend.close()
    assert reference.features is not None and reference.features.shape == (len(prepared.boxes), FEATURE_DIM)
    r = Rig(tmp_path / "state", keys, bundle, make_backend=openvino)
    try:
        result = r.run({"field.jpg": field})["field.jpg"].result
        assert r.models.active is not None and r.models.active.backend.execution_precision == "f32"
    finally:
        r.close()
    assert result is not None and result.input_kind is InputKind.FIELD and result.precision == "FP32"
    assert result.cells is not None and [c.box for c in result.cells] == prepared.boxes
    assert len(result.cells) >= len(truth) // 2  # the finder finds the generated white cells
    np.testing.assert_allclose(
        [[c.probabilities[lab] for lab in ("ALL", "normal")] for c in result.cells],
        reference.probabilities,
        atol=1e-5,
    )
    scores = model.score(reference.features)
    np.testing.assert_allclose([c.ood_score for c in result.cells], scores, rtol=1e-4)
    decision = decide([c.probabilities for c in result.cells], ["ALL", "normal"], RULE)
    assert (result.label, result.cell_counts) == (decision.label, decision.counts)
    assert result.confidence == pytest.approx(decision.confidence)


@pytest.mark.parametrize(
    ("output", "dim", "says"),
    [("pool_3", FEATURE_DIM, "has no output 'pool_3'"), ("features", FEATURE_DIM + 4, "ood.feature_dim")],
)
def test_an_ir_without_the_manifests_feature_output_is_refused(
    tmp_path: Path, keys: Keys, feature_irs: dict[str, Path], output: str, dim: int, says: str
):
    spec = ood_spec(1.0, dim).model_copy(update={"feature_output": output})
    bundle = make_cells_bundle(tmp_path, keys, ood=spec, stats=b"x", src_files=feature_irs)
    backend = openvino()
    with pytest.raises(BackendError, match=says):
        backend.load(tmp_path / "m", verify_bundle(bundle, load_public_key(keys.public), tmp_path / "m"))


def test_a_kind_of_input_is_still_refused_with_ood(
    tmp_path: Path, keys: Keys, fake_ood: tuple[Path, OodModel, float]
):
    _, model, threshold = fake_ood
    bundle = make_cells_bundle(
        tmp_path,
        keys,
        cells=cells_spec([InputKind.FIELD]),
        ood=ood_spec(threshold),
        stats=stats_bytes(model, tmp_path),
    )
    r = Rig(tmp_path / "state", keys, bundle)
    try:
        outcome = r.run({"cell.png": image(RED, 257, 257)})["cell.png"]
    finally:
        r.close()
    assert outcome.kind is OutcomeKind.BAD_IMAGE and "accepts field images only" in outcome.error


def test_int8_is_refused_where_the_trainer_measured_the_flag_does_not_hold(
    tmp_path: Path, keys: Keys, fake_ood: tuple[Path, OodModel, float]
):
    _, model, threshold = fake_ood
    bundle = make_cells_bundle(tmp_path, keys, ood=ood_spec(threshold), stats=stats_bytes(model, tmp_path))
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(folder)
    manifest = Manifest.model_validate_json((folder / "manifest.json").read_bytes())
    broken = manifest.model_copy(
        update={"metrics": {"int8": {"ood_flag_validated": False, "probe_flag_rate_int8": 0.0}}}
    )
    with pytest.raises(ModelError, match="does not hold on the INT8 IR.*FP32 or FP16"):
        load_ood(folder, broken, "INT8")
    assert load_ood(folder, broken, "FP32") is not None  # the flag holds at FP32
    held = manifest.model_copy(update={"metrics": {"int8": {"ood_flag_validated": True}}})
    assert load_ood(folder, held, "INT8") is not None
