"""shared.ood on synthetic features: the score, the conformal threshold, and a statistics file that
is refused, with a message naming it, whenever it is not exactly what the trainer writes."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from shared.cells.spec import OodSpec
from shared.ood import (
    MAX_FILE_BYTES,
    MIN_CALIBRATION_IMAGES,
    OodError,
    OodModel,
    calibrate,
    fit_ood,
    flag_bound,
    flag_rate,
)

D = 48
LATENT = 6


def _source(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes in a low-rank subspace plus isotropic noise, like pre-logits of two cell types."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((LATENT, D)) * 2.0
    means = rng.standard_normal((2, D)) * 3.0 + 5.0
    return mixing, means


def _draw(n: int, seed: int, source: int = 0) -> tuple[np.ndarray, np.ndarray]:
    mixing, means = _source(source)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = means[y] + rng.standard_normal((n, LATENT)) @ mixing + rng.standard_normal((n, D)) * 0.5
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def fitted() -> OodModel:
    x, y = _draw(400, seed=1)
    return fit_ood(x, y, max_components=16)


def _spec(dim: int = D) -> OodSpec:
    return OodSpec(stats_file="ood.npz", feature_output="features", feature_dim=dim, threshold=1.0)


def test_in_distribution_scores_about_one_and_shifted_inputs_far_more(fitted: OodModel) -> None:
    held, _ = _draw(500, seed=2)
    scores = fitted.score(held)
    assert scores.shape == (500,) and scores.dtype == np.float64 and (scores >= 0).all()
    assert 0.5 < float(np.median(scores)) < 2.0  # divided by d: typical inputs score about 1
    # Off the training subspace (a stain the model never saw) and off the feature scale.
    rng = np.random.default_rng(3)
    off_plane = held + rng.standard_normal(held.shape).astype(np.float32) * 3.0
    assert np.median(fitted.score(off_plane)) > 10 * np.median(scores)
    assert (fitted.score(held * 3.0) > scores.max()).all()


def test_the_score_is_the_distance_to_the_nearest_class_mean(fitted: OodModel) -> None:
    assert fitted.means.shape == (2, D)
    assert fitted.score(fitted.means) == pytest.approx([0.0, 0.0], abs=1e-9)
    # Halfway between the two classes is unlike either (Lee et al.'s reason for class means),
    # although it is the very centre of one Gaussian fitted over both classes.
    middle = fitted.means.mean(axis=0, keepdims=True)
    unlabeled = fit_ood(_draw(400, seed=1)[0], max_components=16)
    assert unlabeled.means.shape == (1, D)
    assert unlabeled.score(middle)[0] < 0.1 < 5.0 < fitted.score(middle)[0]


def test_components_are_capped_by_the_data(fitted: OodModel) -> None:
    assert fitted.components.shape == (16, D)
    assert np.allclose(fitted.components @ fitted.components.T, np.eye(16), atol=1e-5)
    few = fit_ood(_draw(12, seed=4)[0], max_components=64)
    assert few.components.shape[0] == (12 - 1) // 2  # half the scatter's rank at most
    assert (fitted.variances > 0).all() and fitted.residual_variance > 0


def test_non_finite_features_are_always_flagged(fitted: OodModel) -> None:
    held, _ = _draw(3, seed=5)
    held[1, 7] = np.nan
    held[2, 0] = np.inf
    scores = fitted.score(held)
    assert np.isfinite(scores[0]) and scores[1] == np.inf and scores[2] == np.inf
    assert flag_rate(scores, threshold=1e12) == pytest.approx(2 / 3)


def test_features_of_another_dimension_are_refused(fitted: OodModel) -> None:
    with pytest.raises(OodError, match=rf"do not fit OOD statistics of dimension {D}"):
        fitted.score(np.zeros((2, D + 1), np.float32))
    with pytest.raises(OodError, match="pass \\[n, 48\\]"):
        fitted.score(np.zeros(D, np.float32))


def test_fit_refuses_too_little_or_broken_data() -> None:
    with pytest.raises(OodError, match="n >= 8"):
        fit_ood(np.zeros((5, D)))
    x, y = _draw(40, seed=6)
    x[3, 3] = np.nan
    with pytest.raises(OodError, match="NaN or infinite"):
        fit_ood(x, y)
    with pytest.raises(OodError, match="one label per row"):
        fit_ood(_draw(40, seed=6)[0], y[:-1])


def test_calibrate_takes_the_conformal_quantile(fitted: OodModel) -> None:
    held, _ = _draw(199, seed=7)
    scores = np.sort(fitted.score(held))
    threshold = calibrate(fitted, held, 0.01)
    # ceil(200 * 0.99) = 198: the 198th smallest of 199 scores, so one held-out score is above.
    assert threshold == scores[197]
    assert flag_rate(scores, threshold) == pytest.approx(1 / 199)
    assert flag_bound(199, 0.01) == pytest.approx(0.01)
    # Too few images for a 1 % quantile: the largest score, and the bound says 1 / (n + 1).
    assert calibrate(fitted, held[:40], 0.01) == fitted.score(held[:40]).max()
    assert flag_bound(40, 0.01) == pytest.approx(1 / 41)


def test_new_in_distribution_images_are_flagged_at_about_the_target_rate(fitted: OodModel) -> None:
    threshold = calibrate(fitted, _draw(1000, seed=8)[0], 0.01)
    new = fitted.score(_draw(20_000, seed=9)[0])
    assert 0.003 < flag_rate(new, threshold) < 0.02


def test_calibrate_refuses_bad_input(fitted: OodModel) -> None:
    held, _ = _draw(50, seed=10)
    with pytest.raises(OodError, match=f"at least {MIN_CALIBRATION_IMAGES} held-out images"):
        calibrate(fitted, held[: MIN_CALIBRATION_IMAGES - 1])
    for rate in (0.0, 1.0, -0.1):
        with pytest.raises(OodError, match="within \\(0, 1\\)"):
            calibrate(fitted, held, rate)
    held[4, 0] = np.nan
    with pytest.raises(OodError, match="NaN or infinite"):
        calibrate(fitted, held)


def test_save_and_load_round_trip(fitted: OodModel, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "ood.npz")
    loaded = OodModel.load(path, _spec())
    held, _ = _draw(20, seed=11)
    assert np.array_equal(loaded.score(held), fitted.score(held))
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == [
            "components.npy",
            "means.npy",
            "residual_variance.npy",
            "variances.npy",
            "version.npy",
        ]
    assert path.stat().st_size < 16 * 1024  # float32, uncompressed: k*d + c*d + k floats
    assert not list(tmp_path.glob(".*tmp"))


def _arrays(model: OodModel) -> dict[str, np.ndarray]:
    return {
        "version": np.asarray([1], np.float32),
        "means": model.means,
        "components": model.components,
        "variances": model.variances,
        "residual_variance": np.asarray([model.residual_variance], np.float32),
    }


def _write(path: Path, arrays: dict[str, np.ndarray], raw: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=True)
            zf.writestr(f"{name}.npy", buf.getvalue())
        for name, data in (raw or {}).items():
            zf.writestr(name, data)
    return path


def _refused(path: Path, match: str, dim: int = D) -> None:
    with pytest.raises(OodError, match=match) as info:
        OodModel.load(path, _spec(dim))
    assert str(path) in str(info.value) and "leukonet trainer bundle" in str(info.value)


def test_a_file_for_another_feature_dimension_is_refused(fitted: OodModel, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "ood.npz")
    _refused(path, "dimension 48 but the manifest's ood.feature_dim is 2048", dim=2048)


def test_missing_oversized_and_non_zip_files_are_refused(fitted: OodModel, tmp_path: Path) -> None:
    _refused(tmp_path / "absent.npz", "cannot read it")
    big = tmp_path / "big.npz"
    with open(big, "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    _refused(big, "over the .*-byte limit")
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    _refused(text, "not a readable .npz file")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(fitted.save(tmp_path / "whole.npz").read_bytes()[:-200])
    _refused(truncated, "not a readable .npz file")


def test_unexpected_members_and_dtypes_are_refused(fitted: OodModel, tmp_path: Path) -> None:
    arrays = _arrays(fitted)
    _refused(_write(tmp_path / "extra.npz", arrays, {"evil.npy": b"x"}), "holds .*evil.npy")
    missing = {k: v for k, v in arrays.items() if k != "variances"}
    _refused(_write(tmp_path / "missing.npz", missing), "expected")
    _refused(
        _write(tmp_path / "f64.npz", {**arrays, "means": fitted.means.astype(np.float64)}),
        "means.npy is float64",
    )
    pickled = np.empty(1, dtype=object)
    pickled[0] = {"payload": 1}
    _refused(_write(tmp_path / "pickle.npz", {**arrays, "version": pickled}), "version.npy is object")


def test_a_header_that_lies_about_its_shape_is_refused_before_reading(
    fitted: OodModel, tmp_path: Path
) -> None:
    arrays = {k: v for k, v in _arrays(fitted).items() if k != "components"}
    buf = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**6, D)}
    np.lib.format.write_array_header_1_0(buf, header)  # 192 MB declared, no data at all
    path = _write(tmp_path / "liar.npz", arrays, {"components.npy": buf.getvalue()})
    _refused(path, r"components has shape \[1000000, 48\]")
    bad_header = _write(tmp_path / "garbage.npz", arrays, {"components.npy": b"\x93NUMPY garbage"})
    _refused(bad_header, "no valid .npy header")


def test_inconsistent_or_impossible_values_are_refused(fitted: OodModel, tmp_path: Path) -> None:
    arrays = _arrays(fitted)
    k = fitted.components.shape[0]
    cases = {
        "shape": ({"variances": np.ones(k + 1, np.float32)}, "variances has shape"),
        "nan": ({"means": np.full_like(fitted.means, np.nan)}, "means holds NaN"),
        "negative": ({"variances": -np.ones(k, np.float32)}, "not positive"),
        "zero": ({"residual_variance": np.zeros(1, np.float32)}, "not positive"),
        "version": ({"version": np.asarray([2], np.float32)}, "format version 2"),
        "skew": ({"components": fitted.components * 2.0}, "not orthonormal"),
    }
    for name, (change, match) in cases.items():
        _refused(_write(tmp_path / f"{name}.npz", {**arrays, **change}), match)


def test_save_replaces_atomically(fitted: OodModel, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ood.npz"
    fitted.save(path)
    first = path.stat().st_ino
    fitted.save(path)
    assert path.is_file() and os.listdir(path.parent) == ["ood.npz"]
    assert path.stat().st_ino != first  # a new file renamed over the old one, never half-written
