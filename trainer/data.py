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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.logs import Progress, kv
from shared.preprocessing import CENTRAL_FRACTION, ImageDecodeError, decode_image

log = logging.getLogger(__name__)

SPLIT_PARTS = ("train", "val", "test")
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
    # part ("train", "val", "test") -> TFRecord shards holding exactly that part's samples in
    # order, when the split comes from `leukonet trainer import`; empty: read the image files.
    records: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = {
            "labels": self.labels,
            "fingerprint": self.fingerprint,
            "seed": self.seed,
            "train": [asdict(s) for s in self.train],
            "val": [asdict(s) for s in self.val],
            "test": [asdict(s) for s in self.test],
            "skipped": [asdict(s) for s in self.skipped],
        }
        if self.records:
            data["records"] = self.records
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Split:
        return cls(
            labels=list(data["labels"]),
            fingerprint=data["fingerprint"],
            seed=int(data["seed"]),
            train=[Sample(**s) for s in data["train"]],
            val=[Sample(**s) for s in data["val"]],
            test=[Sample(**s) for s in data["test"]],
            skipped=[Skipped(**s) for s in data["skipped"]],
            records={k: list(v) for k, v in data.get("records", {}).items()},
        )

    def part(self, name: str) -> list[Sample]:
        """The samples of ``name`` (train, val or test)."""
        if name not in SPLIT_PARTS:
            raise ValueError(f"split part {name!r} is not one of {', '.join(SPLIT_PARTS)}")
        samples: list[Sample] = getattr(self, name)
        return samples

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
            raise DatasetError(
                f"split file {path}: cannot read it ({exc.strerror}); "
                "run `leukonet trainer train` (or `run`) first"
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"split file {path} is not a split written by the trainer: {exc}") from exc


def dataset_fingerprint(samples: list[Sample]) -> str:
    """sha256 over the sorted ``label<TAB>content-sha256`` lines: same images + labels, same print."""
    lines = sorted(f"{s.label}\t{s.sha256}" for s in samples)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def admit_file(
    f: Path,
    label: str,
    labels: list[str],
    seen: dict[str, Sample],
    skipped: list[Skipped],
    samples: list[Sample],
) -> None:
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
        raise DatasetError(
            f"data folder {root_path} does not exist; pass a folder with one sub-folder "
            "per class (e.g. ALL/ and normal/), or make one with `leukonet trainer generate`"
        )
    labels = sorted(p.name for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(labels) < 2:
        raise DatasetError(
            f"data folder {root_path} has {len(labels)} class folder(s) {labels}; "
            "it needs at least two (one sub-folder per class)"
        )
    files = [
        (label, f)
        for label in labels
        for f in sorted((root_path / label).rglob("*"))
        if f.is_file() and not f.name.startswith(".")
    ]
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    seen: dict[str, Sample] = {}
    with Progress(len(files), "scan", log, unit="file") as progress:
        for label, f in files:
            progress.update()
            if f.suffix.lower() not in TF_SUFFIXES:
                skipped.append(
                    Skipped(
                        str(f),
                        f"unsupported format {f.suffix or '(none)'}; "
                        f"convert to one of {', '.join(TF_SUFFIXES)}",
                    )
                )
                continue
            admit_file(f, label, labels, seen, skipped, samples)
    dataset = Dataset(root=str(root_path), labels=labels, samples=samples, skipped=skipped)
    empty = [label for label, n in dataset.counts().items() if n == 0]
    if empty:
        raise DatasetError(f"data folder {root_path}: class folder(s) {empty} hold no usable image")
    for s in skipped:
        log.warning(kv("skipped", path=s.path, reason=s.reason))
    log.info(
        kv(
            "scanned",
            root=root_path,
            labels=",".join(labels),
            images=len(samples),
            skipped=len(skipped),
            **{f"n_{k}": v for k, v in dataset.counts().items()},
        )
    )
    return dataset


def split_dataset(
    dataset: Dataset, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> Split:
    """Stratified, seeded split; each class keeps its proportions in every split.

    Per class, samples are ordered by content hash and shuffled with ``seed``, so the split does
    not depend on file names or scan order. A class with at least three images gets at least one
    in validation and one in test.

    Raises:
        ValueError: fractions outside [0, 1) or summing to 1 or more.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) "
            "and sum to less than 1"
        )
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
        val += items[n_test : n_test + n_val]
        train += items[n_test + n_val :]

    def by_path(samples: list[Sample]) -> list[Sample]:
        return sorted(samples, key=lambda s: s.path)

    return Split(
        labels=list(dataset.labels),
        train=by_path(train),
        val=by_path(val),
        test=by_path(test),
        skipped=list(dataset.skipped),
        fingerprint=dataset.fingerprint,
        seed=seed,
    )


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


def augment_batch(x: Any, seed: int) -> Any:
    """Training augmentation of a batch ``[B, S, S, 3]`` in [-1, 1], drawn per image.

    A smear has no up, down or handedness: a random transpose and random left-right and up-down
    flips pick one of the 8 symmetries of the square (all quarter turns and mirror images) with
    equal chance, and keep the label. Light colour jitter mimics stain and lamp variation:
    brightness +-0.06 (of the [0, 1] range) and saturation x0.85-1.15 (blend with the grey image).
    Vectorised over the batch: per-image ``map`` calls cost a fifth of the training speed on two
    cores (``make bench``, trainer_input_pipeline_ratio).
    """
    import tensorflow as tf

    n = tf.shape(x)[0]

    def coin(k: int) -> Any:
        return tf.reshape(tf.random.uniform([n], seed=seed + k) < 0.5, [-1, 1, 1, 1])

    x = tf.where(coin(0), tf.transpose(x, [0, 2, 1, 3]), x)
    x = tf.where(coin(1), tf.reverse(x, [2]), x)
    x = tf.where(coin(2), tf.reverse(x, [1]), x)
    brightness = tf.random.uniform([n, 1, 1, 1], -0.06, 0.06, seed=seed + 3) * 2.0  # [0, 1] units -> [-1, 1]
    saturation = tf.random.uniform([n, 1, 1, 1], 0.85, 1.15, seed=seed + 4)
    grey = tf.reduce_sum(x * tf.constant([0.2989, 0.587, 0.114]), axis=-1, keepdims=True)
    x = grey + (x - grey) * saturation + brightness
    return tf.clip_by_value(x, -1.0, 1.0)


# Decoded, cropped and resized training images are kept in memory when they fit in this budget:
# decoding dominated the step time on two cores. Augmentation still runs per epoch after the cache.
# Above it, the shuffle buffer is capped to the same budget.
CACHE_BUDGET_BYTES = 1 << 30


def _finish(ds: Any, count: int, image_size: int, batch_size: int, training: bool, seed: int) -> Any:
    """``(image [S, S, 3] in [-1, 1], label)`` elements -> batches; see :func:`make_dataset`."""
    import tensorflow as tf

    if training:
        image_bytes = image_size * image_size * 3 * 4
        if count * image_bytes <= CACHE_BUDGET_BYTES:
            ds = ds.cache()
        buffer = max(1, min(count, CACHE_BUDGET_BYTES // image_bytes))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        ds = ds.batch(batch_size, drop_remainder=True)
        ds = ds.map(lambda x, label: (augment_batch(x, seed), label), num_parallel_calls=1)
        return ds.prefetch(tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(2)


def make_dataset(
    samples: list[Sample], image_size: int, batch_size: int, *, training: bool, seed: int = 0
) -> Any:
    """A ``tf.data.Dataset`` of ``(images [B, S, S, 3] float32 in [-1, 1], labels [B] int32)`` from files.

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
    return _finish(ds, len(samples), image_size, batch_size, training, seed)


def parse_example(serialized: Any) -> tuple[Any, Any]:
    """One serialized ``tf.train.Example`` -> ``(uint8 RGB image [H, W, 3], label int32)`` (graph ops)."""
    import tensorflow as tf

    features = tf.io.parse_single_example(
        serialized,
        {
            "image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        },
    )
    return decode_tf(features["image/encoded"]), tf.cast(features["image/class/label"], tf.int32)


def tfrecord_dataset(
    files: list[str] | list[Path],
    image_size: int,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    count: int | None = None,
    central_fraction: float = CENTRAL_FRACTION,
) -> Any:
    """Same batches as :func:`make_dataset`, read from TFRecord shards written by the importer.

    Training decodes each record once (cached within :data:`CACHE_BUDGET_BYTES`), shuffles
    (seeded), augments and repeats; evaluation reads the shards once, one after the other, so
    the order is the split's sample order. ``count`` (records in the shards) sizes the cache
    and the shuffle buffer; unknown, the buffer is 1024.

    Raises:
        DatasetError: no shard files, or a shard is missing.
    """
    import tensorflow as tf

    if not files:
        raise DatasetError("no TFRecord shards to read; run `leukonet trainer import` first")
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise DatasetError(
            f"TFRecord shard(s) missing: {missing[:3]}; re-run `leukonet trainer import` "
            "or train from the image folder"
        )
    names = [str(f) for f in files]
    ds = tf.data.TFRecordDataset(names, num_parallel_reads=min(len(names), 2) if training else None)

    def load(serialized: Any) -> tuple[Any, Any]:
        image, label = parse_example(serialized)
        return preprocess_for_eval(image, image_size, central_fraction), label

    ds = ds.map(load, num_parallel_calls=2, deterministic=True)
    return _finish(ds, count if count is not None else 1024, image_size, batch_size, training, seed)


def split_input(
    split: Split, part: str, image_size: int, batch_size: int, *, training: bool, seed: int = 0
) -> Any:
    """The batches of one split part, from its TFRecords when the split was imported, else its files."""
    samples = split.part(part)
    if not samples:
        raise DatasetError(f"the {part} split is empty; add images or change the split fractions")
    if split.records:
        return tfrecord_dataset(
            split.records.get(part, []),
            image_size,
            batch_size,
            training=training,
            seed=seed,
            count=len(samples),
        )
    return make_dataset(samples, image_size, batch_size, training=training, seed=seed)


def iter_records(files: list[str]) -> Iterator[tuple[str, bytes, str]]:
    """``(content sha256, encoded image bytes, format)`` of every record in ``files``, in order."""
    import tensorflow as tf

    for name in files:
        for raw in tf.compat.v1.io.tf_record_iterator(name):
            feature = tf.train.Example.FromString(raw).features.feature
            yield (
                feature["image/sha256"].bytes_list.value[0].decode(),
                feature["image/encoded"].bytes_list.value[0],
                feature["image/format"].bytes_list.value[0].decode(),
            )


def encoded_images(split: Split, samples: list[Sample]) -> Iterator[tuple[Sample, bytes, str]]:
    """``(sample, encoded bytes, file suffix)`` of ``samples`` from the split's source (records or
    files), in source order; the suffix is the record's format (``.png`` for an imported TIFF).

    Raises:
        DatasetError: a sample is in neither (its shard or file went missing).
    """
    wanted = {s.sha256: s for s in samples}
    if not split.records:
        for s in samples:
            try:
                yield s, Path(s.path).read_bytes(), Path(s.path).suffix
            except OSError as exc:
                raise DatasetError(
                    f"{s.path}: cannot read it ({exc.strerror}); the data set changed "
                    "since the split was made"
                ) from exc
        return
    files = [f for part in SPLIT_PARTS for f in split.records.get(part, [])]
    found = 0
    for sha, data, fmt in iter_records(files):
        if sha in wanted:
            found += 1
            yield wanted[sha], data, f".{fmt}"
    if found < len(wanted):
        raise DatasetError(
            f"{len(wanted) - found} image(s) of the split are missing from its TFRecords "
            f"{files[:2]}...; re-run `leukonet trainer import`"
        )


def write_images(split: Split, samples: list[Sample], folder: Path) -> list[str]:
    """Copy ``samples``' encoded bytes to ``folder/<sha256>.<ext>`` (ordered as ``samples``); their paths.

    For a split read from TFRecords this is how OpenCV-side code (the parity check) gets files.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    for sample, data, suffix in encoded_images(split, samples):
        path = folder / f"{sample.sha256}{suffix}"
        path.write_bytes(data)
        paths[sample.sha256] = str(path)
    return [paths[s.sha256] for s in samples]
