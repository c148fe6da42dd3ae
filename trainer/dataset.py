"""Class-per-folder data sets: scanning, a leak-free split and the fingerprint (no TensorFlow).

Layout: ``root/<label>/<image>``; labels are the sorted names of the sub-folders (hidden ones
ignored), so a label's index is its position in that list and in the network output.

Every image is identified by the sha256 of its bytes. A file whose content was already seen is
skipped (with the reason, naming the first copy), so no image can sit in two splits; files that
are unreadable or of an unsupported format are skipped with the reason too. Nothing is skipped
silently.

No TensorFlow here (images are checked by decoding them with OpenCV, as the agents do), so
scanning, splitting and reading a split file never load it; the TensorFlow input pipeline over
a :class:`Split` is :mod:`trainer.data`.
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
from shared.preprocessing import ImageDecodeError, decode_image

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
