"""How unfamiliar an input looks to a model: a Mahalanobis score on its pre-logits features.

The method (manifest ``ood.method == "mahalanobis_pca"``) follows Lee et al. (2018), "A simple
unified framework for detecting out-of-distribution samples and adversarial attacks": one Gaussian
per class on the network's penultimate features, the classes sharing one covariance, and the score
of an input is its squared Mahalanobis distance to the *nearest* class mean. With a few hundred
training images and a 2048-d feature, the sample covariance is singular, so it is regularised the
way probabilistic PCA does (Tipping & Bishop, 1999): the top ``k`` principal directions of the
within-class scatter keep their own variance, every other direction shares one isotropic residual
variance (the mean of the discarded eigenvalues). The score is divided by the feature dimension,
so an input typical of the training data scores about 1 whatever ``d``, and 0 is the class mean.

Why not a score on the outputs (maximum softmax probability, energy of Liu et al. 2020): with two
labels the logits are two numbers, and a confident network maps many unlike images to a confident
answer; the 2048 pre-logits features keep what the last layer throws away.

A non-finite feature vector (a broken device, an overflow) scores ``+inf``: it is always flagged.

The statistics file is an ``.npz`` of float32 arrays (``version``, ``means`` [c, d],
``components`` [k, d] with orthonormal rows, ``variances`` [k], ``residual_variance`` [1]),
checked member by member before anything is read: names, dtypes, shapes from each ``.npy`` header,
sizes against :data:`MAX_FILE_BYTES`, finiteness and the feature dimension the manifest declares.
numpy only: no TensorFlow, no OpenVINO, no pickles.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.cells.spec import OodSpec

FORMAT_VERSION = 1
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_CLASSES = 256
MAX_COMPONENTS = 512
DEFAULT_COMPONENTS = 64
MIN_FIT_IMAGES = 8
MIN_CALIBRATION_IMAGES = 10
_MEMBERS = ("version", "means", "components", "variances", "residual_variance")
_ORTHONORMAL_TOLERANCE = 1e-3
# Floor of every variance relative to the mean variance per dimension: keeps the score finite
# on features that are constant in the training set (a dead ReLU channel).
_VARIANCE_FLOOR = 1e-6


class OodError(ValueError):
    """The statistics file or the features cannot be used; the message names the input and the fix."""


@dataclass(frozen=True)
class OodModel:
    """Class means and a regularised shared covariance of pre-logits features.

    Attributes:
        means: ``[c, d]`` one mean per class (``c == 1`` when fitted without labels).
        components: ``[k, d]`` orthonormal principal directions of the within-class scatter.
        variances: ``[k]`` the variance along each direction (> 0).
        residual_variance: the variance of every direction orthogonal to ``components`` (> 0).
    """

    means: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual_variance: float

    @property
    def feature_dim(self) -> int:
        return int(self.means.shape[1])

    def score(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance to the nearest class mean, divided by ``d``; ``[n]`` float64 >= 0.

        Higher is stranger; a row with a NaN or an infinity scores ``+inf``.

        Raises:
            OodError: ``features`` is not ``[n, d]`` with this model's ``d``.
        """
        x = np.asarray(features)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise OodError(
                f"features of shape {list(x.shape)} do not fit OOD statistics of dimension "
                f"{self.feature_dim}; pass [n, {self.feature_dim}] from the model's feature output"
            )
        x = x.astype(np.float64)
        finite = np.isfinite(x).all(axis=1)
        x = np.where(finite[:, None], x, 0.0)
        comps = self.components.astype(np.float64)
        inv_var = 1.0 / self.variances.astype(np.float64)
        inv_res = 1.0 / float(self.residual_variance)
        best = np.full(x.shape[0], np.inf)
        for mean in self.means.astype(np.float64):
            z = x - mean
            proj = z @ comps.T
            total = np.einsum("ij,ij->i", z, z)
            residual = np.maximum(total - np.einsum("ij,ij->i", proj, proj), 0.0)
            d2 = (proj * proj) @ inv_var + residual * inv_res
            best = np.minimum(best, d2)
        out = np.maximum(best / self.feature_dim, 0.0)
        out[~finite] = np.inf
        return out

    def save(self, path: str | Path) -> Path:
        """Write the statistics as an uncompressed ``.npz`` of float32 arrays (atomically)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                version=np.asarray([FORMAT_VERSION], np.float32),
                means=self.means.astype(np.float32),
                components=self.components.astype(np.float32),
                variances=self.variances.astype(np.float32),
                residual_variance=np.asarray([self.residual_variance], np.float32),
            )
        os.replace(tmp, out)
        return out

    @classmethod
    def load(cls, path: str | Path, spec: OodSpec) -> OodModel:
        """Read and check a statistics file against the manifest's ``ood`` section.

        Raises:
            OodError: missing, oversized or corrupt file, an unexpected member, dtype or shape, a
                non-finite or non-positive value, or a feature dimension other than
                ``spec.feature_dim``; the message names the file and what to do.
        """
        return _load(Path(path), spec.feature_dim)


def fit_ood(
    features: np.ndarray,
    labels: np.ndarray | list[int] | None = None,
    *,
    max_components: int = DEFAULT_COMPONENTS,
) -> OodModel:
    """Fit class means and the PCA-regularised shared covariance on training ``features`` ``[n, d]``.

    ``labels`` (``[n]`` class indices) gives one mean per class, as Lee et al.; without them one
    mean for all. ``k = min(max_components, d - 1, (n - c) // 2)`` directions are kept: beyond
    about half the scatter's rank, sample eigenvalues are mostly noise and shrink towards zero,
    which would weigh those directions far too much.

    Raises:
        OodError: fewer than :data:`MIN_FIT_IMAGES` rows, a non-finite feature, labels that do not
            match the rows, or too many classes.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < MIN_FIT_IMAGES or x.shape[1] < 2:
        raise OodError(
            f"OOD fit needs features [n >= {MIN_FIT_IMAGES}, d >= 2], got {list(x.shape)}; "
            "use more training images"
        )
    if not np.isfinite(x).all():
        raise OodError("OOD fit: some training features are NaN or infinite; check the exported model")
    n, d = x.shape
    y = np.zeros(n, np.int64) if labels is None else np.asarray(labels, np.int64)
    if y.shape != (n,):
        raise OodError(f"OOD fit: {len(y)} labels for {n} feature rows; give one label per row")
    classes = np.unique(y)
    if len(classes) > MAX_CLASSES or n - len(classes) < 2:
        raise OodError(
            f"OOD fit: {len(classes)} classes for {n} images; need at most {MAX_CLASSES} and n > c"
        )
    means = np.stack([x[y == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, y)]
    dof = n - len(classes)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    eigen = singular**2 / dof
    total = float(eigen.sum())
    floor = max(total / d * _VARIANCE_FLOOR, float(np.finfo(np.float32).tiny))
    k = max(1, min(max_components, MAX_COMPONENTS, d - 1, dof // 2, len(eigen)))
    residual = max(float(eigen[k:].sum()) / (d - k), floor)
    variances = np.maximum(eigen[:k], residual)
    return OodModel(
        means=means.astype(np.float32),
        components=vt[:k].astype(np.float32),
        variances=variances.astype(np.float32),
        residual_variance=float(np.float32(residual)),
    )


def calibrate(model: OodModel, held_out_features: np.ndarray, target_flag_rate: float = 0.01) -> float:
    """The threshold that flags at most ``target_flag_rate`` of new in-distribution images.

    It is the ``(1 - rate)`` quantile of the held-out scores with split conformal prediction's
    finite-sample correction (Vovk et al. 2005; Angelopoulos & Bates 2021): the
    ``ceil((n + 1) * (1 - rate))``-th smallest of the ``n`` scores. For a new image drawn like the
    held-out ones, P(score > threshold) <= rate, whatever the scores' distribution (the pre-logits
    scores are heavy-tailed, where a plain sample quantile of a hundred images flags several times
    ``rate``). With fewer than ``1 / rate - 1`` images it is the largest score, and the bound is
    ``1 / (n + 1)`` instead: use at least ``1 / rate`` images.

    The features must come from images the model was **not** fitted on.

    Raises:
        OodError: fewer than :data:`MIN_CALIBRATION_IMAGES` rows, a rate outside (0, 1), or a
            held-out feature that is not finite.
    """
    if not 0.0 < target_flag_rate < 1.0:
        raise OodError(f"target flag rate {target_flag_rate} must be within (0, 1), e.g. 0.01")
    scores = model.score(held_out_features)
    n = len(scores)
    if n < MIN_CALIBRATION_IMAGES:
        raise OodError(
            f"OOD calibration needs at least {MIN_CALIBRATION_IMAGES} held-out images, got {n}; "
            "use a larger validation split"
        )
    if not np.isfinite(scores).all():
        raise OodError(
            "OOD calibration: some held-out features are NaN or infinite; check the exported model"
        )
    return float(np.sort(scores)[_conformal_rank(n, target_flag_rate) - 1])


def flag_bound(calibration_images: int, target_flag_rate: float) -> float:
    """The bound :func:`calibrate` guarantees on the share of new in-distribution images flagged,
    with ``calibration_images`` held-out images: ``1 - rank / (n + 1)``, at most ``rate`` once
    ``n >= 1 / rate - 1``, else ``1 / (n + 1)``."""
    n = calibration_images
    return 1.0 - _conformal_rank(n, target_flag_rate) / (n + 1)


def _conformal_rank(n: int, rate: float) -> int:
    """1-based rank of the threshold among ``n`` sorted held-out scores (at most ``n``)."""
    # The small epsilon keeps (n + 1) * (1 - rate) that is an integer in exact arithmetic from
    # rounding up past it in floating point (e.g. 99 * 0.99 + 0.99).
    return max(1, min(int(np.ceil((n + 1) * (1.0 - rate) - 1e-9)), n))


def flag_rate(scores: np.ndarray, threshold: float) -> float:
    """Share of ``scores`` above ``threshold`` (what an agent flags as unfamiliar)."""
    s = np.asarray(scores, np.float64)
    return float(np.mean(s > threshold)) if s.size else 0.0


# --- loading ------------------------------------------------------------------------------------


def _fail(path: Path, problem: str) -> OodError:
    return OodError(
        f"OOD statistics {path}: {problem}; the file must be the one the trainer wrote for this model "
        "(rebuild the bundle with `leukonet trainer bundle`)"
    )


def _member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> tuple[tuple[int, ...], str]:
    """Shape and dtype from an ``.npy`` member's header, before its data is read."""
    with zf.open(info) as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"npy format {version}")
        except ValueError as exc:
            raise _fail(path, f"member {info.filename} has no valid .npy header ({exc})") from None
    if fortran or dtype != np.dtype("<f4"):
        raise _fail(path, f"member {info.filename} is {dtype} (fortran={fortran}), not little-endian float32")
    return tuple(int(s) for s in shape), str(dtype)


def _check_shapes(path: Path, shapes: dict[str, tuple[int, ...]], feature_dim: int) -> None:
    means, comps = shapes["means"], shapes["components"]
    if len(means) != 2 or not 1 <= means[0] <= MAX_CLASSES:
        raise _fail(path, f"means has shape {list(means)}, expected [classes <= {MAX_CLASSES}, d]")
    if means[1] != feature_dim:
        raise _fail(
            path,
            f"its features have dimension {means[1]} but the manifest's ood.feature_dim is {feature_dim}",
        )
    if len(comps) != 2 or comps[1] != feature_dim or not 1 <= comps[0] <= min(MAX_COMPONENTS, feature_dim):
        raise _fail(
            path, f"components has shape {list(comps)}, expected [k <= {MAX_COMPONENTS}, {feature_dim}]"
        )
    expected = {"version": (1,), "variances": (comps[0],), "residual_variance": (1,)}
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise _fail(path, f"{name} has shape {list(shapes[name])}, expected {list(shape)}")


def _load(path: Path, feature_dim: int) -> OodModel:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _fail(path, f"cannot read it ({exc.strerror or exc})") from None
    if size > MAX_FILE_BYTES:
        raise _fail(path, f"{size} bytes, over the {MAX_FILE_BYTES}-byte limit")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            if set(infos) != {f"{m}.npy" for m in _MEMBERS}:
                raise _fail(path, f"holds {sorted(infos)}, expected {[f'{m}.npy' for m in _MEMBERS]}")
            if sum(i.file_size for i in infos.values()) > MAX_FILE_BYTES:
                raise _fail(path, f"unpacks to more than {MAX_FILE_BYTES} bytes")
            shapes = {m: _member_header(zf, infos[f"{m}.npy"], path)[0] for m in _MEMBERS}
            _check_shapes(path, shapes, feature_dim)
            with np.load(path, allow_pickle=False) as data:
                arrays = {m: np.asarray(data[m], np.float32) for m in _MEMBERS}
    except OodError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise _fail(path, f"not a readable .npz file ({exc})") from None
    for name, arr in arrays.items():
        if not np.isfinite(arr).all():
            raise _fail(path, f"{name} holds NaN or infinite values")
    if int(arrays["version"][0]) != FORMAT_VERSION:
        raise _fail(path, f"format version {arrays['version'][0]:g}, this code reads {FORMAT_VERSION}")
    if (arrays["variances"] <= 0).any() or arrays["residual_variance"][0] <= 0:
        raise _fail(path, "a variance is not positive")
    comps = arrays["components"].astype(np.float64)
    gram = comps @ comps.T
    if np.abs(gram - np.eye(len(comps))).max() > _ORTHONORMAL_TOLERANCE:
        raise _fail(path, "components are not orthonormal")
    return OodModel(
        means=arrays["means"],
        components=arrays["components"],
        variances=arrays["variances"],
        residual_variance=float(arrays["residual_variance"][0]),
    )
