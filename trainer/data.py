"""Class-per-folder data sets: scanning, a leak-free split, the fingerprint and the TF input pipeline.

Layout: ``root/<label>/<image>``; labels are the sorted names of the sub-folders (hidden ones
ignored), so a label's index is its position in that list and in the network output.

Every image is identified by the sha256 of its bytes. A file whose content was already seen is
skipped (with the reason, naming the first copy), so no image can sit in two splits; files that
are unreadable or of an unsupported format are skipped with the reason too. Nothing is skipped
silently.

Preprocessing in TensorFlow is TF-Slim's Inception evaluation path, i.e. exactly
``shared.preprocessing``: decode (JPEG with the accurate IDCT, bit-identical to OpenCV) ->
float [0, 1] -> ``tf.image.central_crop(0.875)`` ->
``tf.image.resize(bilinear, antialias=False)`` (half-pixel centres, as ``cv2.INTER_LINEAR``) ->
``(x - 0.5) * 2``. TensorFlow crops and resizes *floats* here; the agent crops and resizes *uint8*
with OpenCV and the IR scales afterwards, so the two differ only by the uint8 rounding of the
resized pixels (at most 1/255 per pixel before scaling; a test holds this).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.logs import Progress, kv
from shared.preprocessing import CENTRAL_FRACTION, ImageDecodeError, decode_image

log = logging.getLogger(__name__)

# What tf.io.decode_image reads (TIFF is not among them): others are skipped with a reason.
TF_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetError(ValueError):
    """A data set that cannot be trained on; the message names the folder and the fix."""


@dataclass(frozen=True)
class Sample:
    """One usable image: its path, label, label index and content sha256."""

    path: str
    label: str
    label_index: int
    sha256: str


@dataclass(frozen=True)
class Skipped:
    """A file left out of the data set and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class Dataset:
    """A scanned folder: labels (sorted), usable samples (sorted by path) and skipped files."""

    root: str
    labels: list[str]
    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.samples)

    def counts(self) -> dict[str, int]:
        return {label: sum(1 for s in self.samples if s.label == label) for label in self.labels}


@dataclass(frozen=True)
class Split:
    """Train / validation / test samples of one data set, disjoint by content hash."""

    labels: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[Skipped]
    fingerprint: str
    seed: int

    def to_json(self) -> dict[str, Any]:
        return {"labels": self.labels, "fingerprint": self.fingerprint, "seed": self.seed,
                "train": [asdict(s) for s in self.train], "val": [asdict(s) for s in self.val],
                "test": [asdict(s) for s in self.test], "skipped": [asdict(s) for s in self.skipped]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Split:
        return cls(labels=list(data["labels"]), fingerprint=data["fingerprint"], seed=int(data["seed"]),
                   train=[Sample(**s) for s in data["train"]], val=[Sample(**s) for s in data["val"]],
                   test=[Sample(**s) for s in data["test"]], skipped=[Skipped(**s) for s in data["skipped"]])

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a split written by :meth:`save`.

        Raises:
            DatasetError: the file is missing or not a split (run ``leukonet trainer train`` first).
        """
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except OSError as exc:
            raise DatasetError(f"split file {path}: cannot read it ({exc.strerror}); "
                               "run `leukonet trainer train` (or `run`) first") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"split file {path} is not a split written by the trainer: {exc}") from exc


def dataset_fingerprint(samples: list[Sample]) -> str:
    """sha256 over the sorted ``label<TAB>content-sha256`` lines: same images + labels, same print."""
    lines = sorted(f"{s.label}\t{s.sha256}" for s in samples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()



def admit_file(f: Path, label: str, labels: list[str], seen: dict[str, Sample],
               skipped: list[Skipped], samples: list[Sample]) -> None:
    """Read and decode ``f``; append it to ``samples``, or its reason to ``skipped``.

    A file is skipped when it cannot be read or decoded, or when its content hash was seen
    before (the reason names the first copy, and both labels when they disagree).
    """
    try:
        data = f.read_bytes()
        decode_image(data, str(f))
    except OSError as exc:
        skipped.append(Skipped(str(f), f"unreadable: {exc.strerror}"))
        return
    except ImageDecodeError as exc:
        skipped.append(Skipped(str(f), f"unreadable: {exc}"))
        return
    digest = hashlib.sha256(data).hexdigest()
    if digest in seen:
        first = seen[digest]
        clash = "" if first.label == label else f" (labelled {first.label!r} there, {label!r} here)"
        skipped.append(Skipped(str(f), f"duplicate by content hash of {first.path}{clash}"))
        return
    sample = Sample(path=str(f), label=label, label_index=labels.index(label), sha256=digest)
    seen[digest] = sample
    samples.append(sample)

def scan_dataset(root: str | Path) -> Dataset:
    """Scan ``root/<label>/*`` into a :class:`Dataset`.

    Raises:
        DatasetError: ``root`` is not a folder, has fewer than two label folders, or a label
            has no usable image.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise DatasetError(f"data folder {root_path} does not exist; pass a folder with one sub-folder "
                           "per class (e.g. ALL/ and normal/), or make one with `leukonet trainer generate`")
    labels = sorted(p.name for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(labels) < 2:
        raise DatasetError(f"data folder {root_path} has {len(labels)} class folder(s) {labels}; "
                           "it needs at least two (one sub-folder per class)")
    files = [(label, f) for label in labels for f in sorted((root_path / label).rglob("*"))
             if f.is_file() and not f.name.startswith(".")]
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    seen: dict[str, Sample] = {}
    with Progress(len(files), "scan", log, unit="file") as progress:
        for label, f in files:
            progress.update()
            if f.suffix.lower() not in TF_SUFFIXES:
                skipped.append(Skipped(str(f), f"unsupported format {f.suffix or '(none)'}; "
                                               f"convert to one of {', '.join(TF_SUFFIXES)}"))
                continue
            admit_file(f, label, labels, seen, skipped, samples)
    dataset = Dataset(root=str(root_path), labels=labels, samples=samples, skipped=skipped)
    empty = [label for label, n in dataset.counts().items() if n == 0]
    if empty:
        raise DatasetError(f"data folder {root_path}: class folder(s) {empty} hold no usable image")
    for s in skipped:
        log.warning(kv("skipped", path=s.path, reason=s.reason))
    log.info(kv("scanned", root=root_path, labels=",".join(labels), images=len(samples),
                skipped=len(skipped), **{f"n_{k}": v for k, v in dataset.counts().items()}))
    return dataset


def split_dataset(dataset: Dataset, val_fraction: float = 0.15, test_fraction: float = 0.15,
                  seed: int = 0) -> Split:
    """Stratified, seeded split; each class keeps its proportions in every split.

    Per class, samples are ordered by content hash and shuffled with ``seed``, so the split does
    not depend on file names or scan order. A class with at least three images gets at least one
    in validation and one in test.

    Raises:
        ValueError: fractions outside [0, 1) or summing to 1 or more.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) "
                         "and sum to less than 1")
    rng = np.random.default_rng(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    test: list[Sample] = []
    for label in dataset.labels:
        items = sorted((s for s in dataset.samples if s.label == label), key=lambda s: s.sha256)
        order = rng.permutation(len(items))
        items = [items[i] for i in order]
        n = len(items)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        if n >= 3:
            n_test = max(n_test, 1) if test_fraction > 0 else 0
            n_val = max(n_val, 1) if val_fraction > 0 else 0
        test += items[:n_test]
        val += items[n_test:n_test + n_val]
        train += items[n_test + n_val:]
    def by_path(samples: list[Sample]) -> list[Sample]:
        return sorted(samples, key=lambda s: s.path)

    return Split(labels=list(dataset.labels), train=by_path(train), val=by_path(val), test=by_path(test),
                 skipped=list(dataset.skipped), fingerprint=dataset.fingerprint, seed=seed)


# --- TensorFlow input pipeline ---------------------------------------------------------------

def decode_tf(image_bytes: Any) -> Any:
    """Decode JPEG/PNG/BMP bytes to uint8 RGB ``[H, W, 3]`` (TF graph op), as OpenCV decodes them.

    JPEGs use ``dct_method="INTEGER_ACCURATE"``: TensorFlow's default IDCT differs from OpenCV's
    libjpeg-turbo by up to 13 grey levels on a pixel, the accurate one matches it exactly, so the
    network trains on the pixels the agents will see.
    """
    import tensorflow as tf

    image = tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def preprocess_for_eval(image: Any, image_size: int, central_fraction: float = CENTRAL_FRACTION) -> Any:
    """uint8 RGB ``[H, W, 3]`` -> float32 ``[S, S, 3]`` in [-1, 1]: Inception's eval preprocessing."""
    import tensorflow as tf

    x = tf.image.convert_image_dtype(image, tf.float32)  # uint8 -> [0, 1]
    x = tf.image.central_crop(x, central_fraction)
    x = tf.image.resize(x, [image_size, image_size], method="bilinear", antialias=False)
    x = tf.clip_by_value(x, 0.0, 1.0)
    return (x - 0.5) * 2.0


def augment(x01: Any, seed: int) -> Any:
    """Training augmentation on float [0, 1] ``[S, S, 3]``: flips, 90-degree turns, light colour jitter.

    A smear has no up, down or handedness, so flips and quarter turns keep the label; the jitter
    mimics stain and lamp variation without changing the cell's look.
    """
    import tensorflow as tf

    x = tf.image.random_flip_left_right(x01, seed=seed)
    x = tf.image.random_flip_up_down(x, seed=seed + 1)
    k = tf.random.uniform([], 0, 4, dtype=tf.int32, seed=seed + 2)
    x = tf.image.rot90(x, k)
    x = tf.image.random_brightness(x, 0.06, seed=seed + 3)
    x = tf.image.random_saturation(x, 0.85, 1.15, seed=seed + 4)
    return tf.clip_by_value(x, 0.0, 1.0)


# Decoded, cropped and resized training images are kept in memory when they fit in this budget:
# decoding dominated the step time on two cores. Augmentation still runs per epoch after the cache.
CACHE_BUDGET_BYTES = 1 << 30


def make_dataset(samples: list[Sample], image_size: int, batch_size: int, *, training: bool,
                 seed: int = 0) -> Any:
    """A ``tf.data.Dataset`` of ``(images [B, S, S, 3] float32 in [-1, 1], labels [B] int32)``.

    Training: decoded + cropped + resized once (cached in memory within
    :data:`CACHE_BUDGET_BYTES`), then shuffled each epoch (seeded), augmented, repeated forever,
    full batches only. Evaluation: file order, one pass, the last batch may be short.

    Raises:
        DatasetError: ``samples`` is empty.
    """
    import tensorflow as tf

    if not samples:
        raise DatasetError("no samples to feed; the split is empty (add images or lower the split fractions)")
    paths = [s.path for s in samples]
    labels = [s.label_index for s in samples]
    ds = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int32)))

    def load(path: Any, label: Any) -> tuple[Any, Any]:
        return preprocess_for_eval(decode_tf(tf.io.read_file(path)), image_size), label

    ds = ds.map(load, num_parallel_calls=2, deterministic=True)
    if training:
        if len(samples) * image_size * image_size * 3 * 4 <= CACHE_BUDGET_BYTES:
            ds = ds.cache()
        ds = ds.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True).repeat()

        def jitter(x: Any, label: Any) -> tuple[Any, Any]:
            return (augment(x / 2.0 + 0.5, seed) - 0.5) * 2.0, label

        ds = ds.map(jitter, num_parallel_calls=2, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(2)
