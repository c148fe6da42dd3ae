"""Data set scanning, the leak-free split and the fingerprint (no TensorFlow); TF-vs-OpenCV preprocessing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from shared.preprocessing import crop_and_resize, decode_image, to_network_input
from trainer.data import make_dataset
from trainer.dataset import DatasetError, Split, dataset_fingerprint, scan_dataset, split_dataset
from trainer.synthetic import generate_dataset


@pytest.fixture(scope="module")
def smears(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("smears")
    generate_dataset(root, per_class=20, image_size=96, seed=7)
    return root


@pytest.fixture
def messy(tmp_path: Path, smears: Path) -> Path:
    """A copy of the smears with duplicates, junk, a truncated JPEG and an unsupported file."""
    root = tmp_path / "messy"
    shutil.copytree(smears, root)
    shutil.copy(root / "ALL" / "ALL-00000.jpg", root / "ALL" / "copy-of-0.jpg")  # same class
    shutil.copy(root / "ALL" / "ALL-00001.jpg", root / "normal" / "mislabelled.jpg")  # other class
    (root / "normal" / "garbage.jpg").write_bytes(b"not an image at all")
    good = (root / "normal" / "normal-00000.jpg").read_bytes()
    (root / "normal" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "normal" / "notes.txt").write_text("scanner settings")
    (root / "normal" / ".hidden.jpg").write_bytes(good)
    return root


def test_scan_skips_with_reasons_and_keeps_first_copy(messy: Path) -> None:
    ds = scan_dataset(messy)
    assert ds.labels == ["ALL", "normal"]
    assert ds.counts() == {"ALL": 20, "normal": 20}
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    assert set(reasons) == {"copy-of-0.jpg", "mislabelled.jpg", "garbage.jpg", "truncated.jpg", "notes.txt"}
    assert reasons["copy-of-0.jpg"].startswith("duplicate by content hash of ")
    assert "ALL-00000.jpg" in reasons["copy-of-0.jpg"]
    assert "labelled 'ALL' there, 'normal' here" in reasons["mislabelled.jpg"]
    assert "unreadable" in reasons["garbage.jpg"] and "truncated" in reasons["truncated.jpg"]
    assert "unsupported format .txt" in reasons["notes.txt"]
    assert len({s.sha256 for s in ds.samples}) == len(ds.samples)


def test_split_is_stratified_disjoint_by_content_and_seeded(messy: Path) -> None:
    ds = scan_dataset(messy)
    split = split_dataset(ds, val_fraction=0.2, test_fraction=0.2, seed=5)
    parts = {"train": split.train, "val": split.val, "test": split.test}
    hashes = {name: {s.sha256 for s in samples} for name, samples in parts.items()}
    assert not hashes["train"] & hashes["val"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]
    assert sum(len(h) for h in hashes.values()) == len(ds.samples)
    for samples, per_class in ((split.val, 4), (split.test, 4), (split.train, 12)):
        assert sorted(s.label for s in samples).count("ALL") == per_class
        assert sorted(s.label for s in samples).count("normal") == per_class
    assert split.skipped == ds.skipped
    again = split_dataset(ds, val_fraction=0.2, test_fraction=0.2, seed=5)
    assert [s.sha256 for s in again.test] == [s.sha256 for s in split.test]
    other = split_dataset(ds, val_fraction=0.2, test_fraction=0.2, seed=6)
    assert {s.sha256 for s in other.test} != hashes["test"]


def test_split_round_trips_through_json(tmp_path: Path, smears: Path) -> None:
    split = split_dataset(scan_dataset(smears), seed=1)
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == split
    with pytest.raises(DatasetError, match="run `leukonet trainer train`"):
        Split.load(tmp_path / "missing.json")


def test_fingerprint_depends_on_content_and_labels_not_names(tmp_path: Path, smears: Path) -> None:
    base = scan_dataset(smears)
    renamed = tmp_path / "renamed"
    shutil.copytree(smears, renamed)
    for f in (renamed / "ALL").glob("*.jpg"):
        f.rename(f.with_name("x" + f.name))
    assert scan_dataset(renamed).fingerprint == base.fingerprint
    relabelled = list(base.samples)
    relabelled[0] = type(relabelled[0])(
        path=relabelled[0].path, label="normal", label_index=1, sha256=relabelled[0].sha256
    )
    assert dataset_fingerprint(relabelled) != base.fingerprint


def test_folder_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "only").mkdir()
    with pytest.raises(DatasetError, match="at least two"):
        scan_dataset(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"\['empty'\] hold no usable image"):
        tiny = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
        (tmp_path / "only" / "a.jpg").write_bytes(tiny)
        scan_dataset(tmp_path)


def test_scanning_and_splitting_load_no_tensorflow(tmp_path: Path, smears: Path) -> None:
    # A fresh interpreter: in this one another test may have loaded TensorFlow already.
    code = (
        "import sys\n"
        "from trainer.dataset import Split, scan_dataset, split_dataset\n"
        f"split_dataset(scan_dataset({str(smears)!r}), seed=1).save({str(tmp_path / 'split.json')!r})\n"
        f"Split.load({str(tmp_path / 'split.json')!r})\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'tf_slim'}))\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("size", [75, 128])
def test_tf_pipeline_matches_opencv_path(
    ml_stack: None, tmp_path: Path, smears: Path, suffix: str, size: int
) -> None:
    # Same file through the trainer's TF pipeline and the agent's OpenCV crop + the IR's scaling:
    # they may differ only by the uint8 rounding of the resized pixels.
    src = sorted((smears / "ALL").glob("*.jpg"))[3]
    image = decode_image(src.read_bytes())
    root = tmp_path / "one"
    (root / "ALL").mkdir(parents=True)
    (root / "normal").mkdir()
    path = root / "ALL" / f"img{suffix}"
    if suffix == ".jpg":
        shutil.copy(src, path)
    else:
        cv2.imwrite(str(path), image)
    cv2.imwrite(str(root / "normal" / "n.png"), image[::-1])
    split = split_dataset(scan_dataset(root), val_fraction=0.0, test_fraction=0.0)
    sample = next(s for s in split.train if s.label == "ALL")
    batch, labels = next(iter(make_dataset([sample], size, 1, training=False)))
    tf_x = batch.numpy()[0]
    cv_x = to_network_input(crop_and_resize(decode_image(Path(sample.path).read_bytes()), size))
    diff = np.abs(tf_x - cv_x)
    assert tf_x.shape == cv_x.shape == (size, size, 3)
    assert int(labels.numpy()[0]) == 0
    assert diff.max() <= 2 / 127.5
    assert diff.mean() <= 0.5 / 127.5


def test_training_pipeline_augments_within_range(ml_stack: None, smears: Path) -> None:
    split = split_dataset(scan_dataset(smears), seed=0)
    images, labels = next(iter(make_dataset(split.train, 75, 8, training=True, seed=1)))
    x = images.numpy()
    assert x.shape == (8, 75, 75, 3) and labels.shape == (8,)
    assert x.min() >= -1.0 and x.max() <= 1.0
    with pytest.raises(DatasetError, match="split is empty"):
        make_dataset([], 75, 8, training=True)


def test_batch_augmentation_is_a_symmetry_of_the_square_plus_light_jitter(ml_stack: None) -> None:
    import tensorflow as tf

    from trainer.data import augment_batch

    grey = np.random.default_rng(0).uniform(-0.5, 0.5, (6, 6, 1)).astype(np.float32)
    image = np.repeat(grey, 3, axis=2)  # R = G = B: saturation leaves it alone
    symmetries = [np.rot90(image, k) for k in range(4)] + [np.rot90(image[::-1], k) for k in range(4)]
    out = augment_batch(tf.constant(np.stack([image] * 64)), seed=3).numpy()
    seen = set()
    for o in out:
        shift = float(o.mean() - image.mean())
        assert abs(shift) <= 0.12 + 1e-6  # brightness +-0.06 of [0, 1] is +-0.12 in [-1, 1]
        matches = [i for i, s in enumerate(symmetries) if np.allclose(o - shift, s, atol=1e-5)]
        assert matches, "not a flip or quarter turn of the input"
        seen.add(matches[0])
    assert len(seen) >= 6  # drawn per image, not once per batch
    coloured = np.random.default_rng(1).uniform(-0.5, 0.5, (64, 6, 6, 3)).astype(np.float32)
    jittered = augment_batch(tf.constant(coloured), seed=4).numpy()
    assert jittered.min() >= -1.0 and jittered.max() <= 1.0
    spread = lambda a: (a - a.mean(axis=-1, keepdims=True)).std(axis=(1, 2, 3))  # noqa: E731
    ratio = spread(jittered) / spread(coloured)
    assert ratio.min() > 0.8 and ratio.max() < 1.2 and ratio.std() > 0.01  # saturation x0.85-1.15 per image
