"""Data import: ALL-IDB1, ALL-IDB2 or class-per-folder images -> a split, sharded TFRecords and a fingerprint.

Layouts (``layout="auto"`` picks one from the file names):

* ``all-idb1``: ``ImNNN_L.jpg`` (whole smears, 2592x1944), label = the digit ``L`` after ``_``:
  ``1`` -> ``ALL`` (lymphoblasts present), ``0`` -> ``normal``.
* ``all-idb2``: ``ImNNN_L.tif`` (257x257 crops around one cell), same label rule.
* ``folders``: ``root/<label>/<image>``, labels = sorted sub-folder names.

ALL-IDB2's cells are cut out of ALL-IDB1's smears, so a data set holding both would put the same
cell in training and in test under different bytes; content hashes cannot see that, so such a mix
is refused outright (:class:`MixedAllIdbError`).

Every file left out is listed with its reason: unsupported format, unreadable, no label (name or
folder gives none), duplicate by content hash (naming the first copy). The split is
:func:`trainer.dataset.split_dataset` (stratified, seeded, disjoint by content hash).

Output (TF-Slim's ``download_and_convert_*`` habit)::

    out_dir/
      <split>-NNNNN-of-MMMMM.tfrecord   tf.train.Example per image (see FEATURE_KEYS)
      labels.txt                        "<index>:<label>" lines, as TF-Slim's dataset_utils writes
      split.json                        the split (:class:`trainer.dataset.Split`), original paths
      dataset.json                      layout, labels, counts, fingerprint(s), shards, skipped files

Images are stored with their original bytes when TensorFlow can decode them (JPEG, PNG, BMP);
TIFFs are re-encoded losslessly as PNG. The content hash is always of the original file.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import cv2

from shared.logs import Progress, kv
from shared.preprocessing import SUPPORTED_SUFFIXES, decode_image
from trainer.dataset import (
    Dataset,
    DatasetError,
    Sample,
    Skipped,
    Split,
    admit_file,
    dataset_fingerprint,
    split_dataset,
)

log = logging.getLogger(__name__)

Layout = Literal["auto", "all-idb1", "all-idb2", "folders"]
LAYOUTS: tuple[str, ...] = ("auto", "all-idb1", "all-idb2", "folders")
ALL_IDB_LABELS = ["ALL", "normal"]  # sorted; digit 1 -> ALL, 0 -> normal
_IDB1_RE = re.compile(r"^Im(\d+)_([0-9])\.jpe?g$", re.IGNORECASE)
_IDB2_RE = re.compile(r"^Im(\d+)_([0-9])\.tiff?$", re.IGNORECASE)
SPLIT_NAMES = ("train", "validation", "test")
DATASET_FILE = "dataset.json"
LABELS_FILE = "labels.txt"
SPLIT_FILE = "split.json"
FEATURE_KEYS = (
    "image/encoded",
    "image/format",
    "image/class/label",
    "image/height",
    "image/width",
    "image/sha256",
    "image/filename",
)
_TF_NATIVE = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".bmp": "bmp"}


class MixedAllIdbError(DatasetError):
    """ALL-IDB1 and ALL-IDB2 images in one data set: the same cells would leak across splits."""


def idb_label(name: str) -> tuple[str, str] | None:
    """``(set, label)`` for an ALL-IDB file name, e.g. ``Im006_1.jpg`` -> ``("all-idb1", "ALL")``.

    Returns ``None`` for names that follow neither ALL-IDB convention. A digit other than 0 or 1
    yields the label ``"?"`` (callers skip it with a reason).
    """
    for which, pattern in (("all-idb1", _IDB1_RE), ("all-idb2", _IDB2_RE)):
        m = pattern.match(name)
        if m:
            digit = m.group(2)
            return which, {"1": "ALL", "0": "normal"}.get(digit, "?")
    return None


def _image_files(root: Path) -> list[Path]:
    return sorted(
        f
        for f in root.rglob("*")
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts)
    )


def detect_layout(root: Path, files: Iterable[Path]) -> str:
    """``all-idb1``/``all-idb2`` when file names follow those conventions, else ``folders``.

    Raises:
        MixedAllIdbError: names of both ALL-IDB1 and ALL-IDB2 are present.
    """
    seen: dict[str, str] = {}
    for f in files:
        hit = idb_label(f.name)
        if hit:
            seen.setdefault(hit[0], str(f))
    if len(seen) > 1:
        raise MixedAllIdbError(
            f"data folder {root} mixes ALL-IDB1 ({seen['all-idb1']}) and ALL-IDB2 ({seen['all-idb2']}) "
            "images. ALL-IDB2's cells are cropped from ALL-IDB1's smears, so the same cell would sit "
            "in training and in test; import one of the two sets only (ALL-IDB2 for per-cell "
            "classification, ALL-IDB1 for whole smears)"
        )
    return next(iter(seen), "folders")


def _label_of(layout: str, root: Path, f: Path) -> tuple[str | None, str]:
    """``(label, reason)``: the label, or ``None`` with why there is none."""
    if layout == "folders":
        rel = f.relative_to(root).parts
        if len(rel) < 2:
            return None, "no label: file sits directly in the data folder; put it in a class sub-folder"
        return rel[0], ""
    hit = idb_label(f.name)
    if hit is None:
        return None, f"no label: name does not follow the {layout} convention ImNNN_L (L = 0 or 1)"
    if hit[0] != layout:
        raise MixedAllIdbError(
            f"{f}: an {hit[0]} file in a data set imported as {layout}; ALL-IDB2's "
            "cells are cropped from ALL-IDB1's smears, so the two cannot be mixed"
        )
    if hit[1] == "?":
        return None, "no label: the digit after '_' must be 1 (ALL) or 0 (normal)"
    return hit[1], ""


def scan_sources(root: str | Path, layout: Layout = "auto") -> tuple[Dataset, str]:
    """Scan ``root`` in ``layout``: a :class:`Dataset` (paths = original files) and the layout used.

    Raises:
        DatasetError: ``root`` is missing, fewer than two labels have images, or ``layout`` is unknown.
        MixedAllIdbError: ALL-IDB1 and ALL-IDB2 files are mixed.
    """
    root_path = Path(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if not root_path.is_dir():
        raise DatasetError(
            f"data folder {root_path} does not exist; pass an ALL-IDB1/ALL-IDB2 folder or "
            "one with a sub-folder per class"
        )
    files = _image_files(root_path)
    chosen = detect_layout(root_path, files) if layout == "auto" else layout
    if chosen == "folders":
        labels = sorted(
            {f.relative_to(root_path).parts[0] for f in files if len(f.relative_to(root_path).parts) > 1}
        )
    else:
        labels = list(ALL_IDB_LABELS)
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    seen: dict[str, Sample] = {}
    with Progress(len(files), "import-scan", log, unit="file") as progress:
        for f in files:
            progress.update()
            if f.suffix.lower() not in SUPPORTED_SUFFIXES:
                skipped.append(
                    Skipped(
                        str(f),
                        f"unsupported format {f.suffix or '(none)'}; "
                        f"convert to one of {', '.join(SUPPORTED_SUFFIXES)}",
                    )
                )
                continue
            label, reason = _label_of(chosen, root_path, f)
            if label is None:
                skipped.append(Skipped(str(f), reason))
                continue
            admit_file(f, label, labels, seen, skipped, samples)
    dataset = Dataset(root=str(root_path), labels=labels, samples=samples, skipped=skipped)
    for s in skipped:
        log.warning(kv("skipped", path=s.path, reason=s.reason))
    empty = [label for label, n in dataset.counts().items() if n == 0]
    if len(labels) < 2 or empty:
        raise DatasetError(
            f"data folder {root_path} ({chosen}): labels {labels}, without images: {empty}; "
            "it needs at least two labels with usable images "
            f"({len(skipped)} file(s) skipped, see the warnings)"
        )
    log.info(
        kv(
            "import_scanned",
            root=root_path,
            layout=chosen,
            images=len(samples),
            skipped=len(skipped),
            **{f"n_{k}": v for k, v in dataset.counts().items()},
        )
    )
    return dataset, chosen


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_dataset` wrote; also ``dataset.json``."""

    out_dir: str
    layout: str
    labels: list[str]
    fingerprint: str
    split_fingerprints: dict[str, str]
    counts: dict[str, dict[str, int]]
    shards: dict[str, list[str]]
    skipped: list[Skipped]
    seed: int

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [asdict(s) for s in self.skipped]
        return data


def _encoded(sample: Sample) -> tuple[bytes, str, int, int]:
    """``(bytes, format, height, width)`` TensorFlow can decode: original bytes, or PNG for TIFF."""
    data = Path(sample.path).read_bytes()
    image = decode_image(data, sample.path)
    fmt = _TF_NATIVE.get(Path(sample.path).suffix.lower())
    if fmt is None:
        ok, buf = cv2.imencode(".png", image)
        if not ok:
            raise DatasetError(f"{sample.path}: cannot re-encode it as PNG")
        data, fmt = buf.tobytes(), "png"
    return data, fmt, int(image.shape[0]), int(image.shape[1])


def _example(sample: Sample) -> Any:
    import tensorflow as tf

    data, fmt, height, width = _encoded(sample)

    def b(v: bytes) -> Any:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v: int) -> Any:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": b(data),
                "image/format": b(fmt.encode()),
                "image/class/label": i(sample.label_index),
                "image/height": i(height),
                "image/width": i(width),
                "image/sha256": b(sample.sha256.encode()),
                "image/filename": b(Path(sample.path).name.encode()),
            }
        )
    )


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.tfrecord"


def write_tfrecords(samples: list[Sample], out_dir: Path, split: str, shards: int) -> list[str]:
    """Write ``samples`` as ``shards`` TFRecord files (fewer when there are fewer samples)."""
    import tensorflow as tf

    n_shards = max(1, min(shards, len(samples)))
    per = -(-len(samples) // n_shards) if samples else 0
    names: list[str] = []
    with Progress(len(samples), f"tfrecord-{split}", log, unit="img") as progress:
        for k in range(n_shards):
            name = shard_name(split, k, n_shards)
            with tf.io.TFRecordWriter(str(out_dir / name)) as writer:
                for sample in samples[k * per : (k + 1) * per]:
                    writer.write(_example(sample).SerializeToString())
                    progress.update()
            names.append(name)
    return names


def import_dataset(
    root: str | Path,
    out_dir: str | Path,
    *,
    layout: Layout = "auto",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    shards: int = 4,
) -> ImportResult:
    """Scan, split and convert ``root`` into ``out_dir`` (see the module docstring).

    Raises:
        DatasetError: unusable data (message says why), or ``out_dir`` already holds an import.
        MixedAllIdbError: ALL-IDB1 and ALL-IDB2 mixed.
    """
    out = Path(out_dir)
    if (out / DATASET_FILE).exists():
        raise DatasetError(
            f"{out} already holds an import ({DATASET_FILE}); choose another --out or delete it"
        )
    if shards < 1:
        raise DatasetError(f"shards must be at least 1, got {shards}")
    dataset, chosen = scan_sources(root, layout)
    split = split_dataset(dataset, val_fraction, test_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    parts = {"train": split.train, "validation": split.val, "test": split.test}
    shard_files = {
        name: write_tfrecords(samples, out, name, shards) if samples else []
        for name, samples in parts.items()
    }
    (out / LABELS_FILE).write_text("".join(f"{i}:{label}\n" for i, label in enumerate(split.labels)))
    split.save(out / SPLIT_FILE)
    result = ImportResult(
        out_dir=str(out),
        layout=chosen,
        labels=split.labels,
        fingerprint=split.fingerprint,
        split_fingerprints={name: dataset_fingerprint(samples) for name, samples in parts.items()},
        counts={
            name: {label: sum(1 for s in samples if s.label == label) for label in split.labels}
            for name, samples in parts.items()
        },
        shards=shard_files,
        skipped=list(dataset.skipped),
        seed=seed,
    )
    (out / DATASET_FILE).write_text(json.dumps(result.to_json(), indent=2))
    log.info(
        kv(
            "imported",
            out=out,
            layout=chosen,
            fingerprint=split.fingerprint[:16],
            train=len(split.train),
            validation=len(split.val),
            test=len(split.test),
            skipped=len(dataset.skipped),
        )
    )
    return result


def load_import(out_dir: str | Path) -> tuple[ImportResult, Split]:
    """Read an import written by :func:`import_dataset`.

    Raises:
        DatasetError: ``out_dir`` holds no import (run ``leukonet trainer import`` first).
    """
    out = Path(out_dir)
    try:
        data = json.loads((out / DATASET_FILE).read_text())
    except OSError as exc:
        raise DatasetError(
            f"{out}: no {DATASET_FILE} ({exc.strerror}); run `leukonet trainer import` first"
        ) from exc
    data["skipped"] = [Skipped(**s) for s in data["skipped"]]
    return ImportResult(**data), Split.load(out / SPLIT_FILE)
