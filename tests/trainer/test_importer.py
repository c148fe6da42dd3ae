"""Data import: ALL-IDB1/2 and folder labels, skip reasons, split isolation, mixed-set refusal, TFRecords."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from trainer import cli as trainer_cli
from trainer.data import tfrecord_dataset
from trainer.dataset import DatasetError
from trainer.importer import (
    MixedAllIdbError,
    idb_label,
    import_dataset,
    load_import,
    scan_sources,
)


def _image(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


@pytest.fixture
def idb2(tmp_path: Path) -> Path:
    """An ALL-IDB2-like folder: 10 ALL + 10 normal TIFFs, a duplicate, junk, and an unlabelled name."""
    root = tmp_path / "ALL_IDB2" / "img"
    for i in range(20):
        _write(root / f"Im{i + 1:03d}_{1 if i < 10 else 0}.tif", _image(i))
    (root / "Im021_1.tif").write_bytes((root / "Im001_1.tif").read_bytes())  # duplicate content
    (root / "Im022_0.tif").write_bytes(b"II*\x00 broken")
    _write(root / "cell.tif", _image(99))
    _write(root / "Im023_7.tif", _image(98))
    (root / "readme.txt").write_text("ALL-IDB2")
    return tmp_path / "ALL_IDB2"


def test_idb_names_give_set_and_label() -> None:
    assert idb_label("Im006_1.jpg") == ("all-idb1", "ALL")
    assert idb_label("Im108_0.JPG") == ("all-idb1", "normal")
    assert idb_label("Im260_0.tif") == ("all-idb2", "normal")
    assert idb_label("Im001_1.tif") == ("all-idb2", "ALL")
    assert idb_label("cell.tif") is None and idb_label("Im001.jpg") is None


def test_idb2_labels_from_names_and_every_skip_has_a_reason(idb2: Path) -> None:
    ds, layout = scan_sources(idb2)
    assert layout == "all-idb2"
    assert ds.labels == ["ALL", "normal"] and ds.counts() == {"ALL": 10, "normal": 10}
    assert all(s.label == ("ALL" if Path(s.path).stem.endswith("_1") else "normal") for s in ds.samples)
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    assert set(reasons) == {"Im021_1.tif", "Im022_0.tif", "cell.tif", "Im023_7.tif", "readme.txt"}
    assert (
        reasons["Im021_1.tif"].startswith("duplicate by content hash of ")
        and "Im001_1.tif" in reasons["Im021_1.tif"]
    )
    assert reasons["Im022_0.tif"].startswith("unreadable")
    assert reasons["cell.tif"].startswith("no label") and "ImNNN_L" in reasons["cell.tif"]
    assert reasons["Im023_7.tif"].startswith("no label") and "1 (ALL) or 0 (normal)" in reasons["Im023_7.tif"]
    assert "unsupported format .txt" in reasons["readme.txt"]


def test_idb1_jpgs_and_folder_layout(tmp_path: Path) -> None:
    for i in range(6):
        _write(tmp_path / "idb1" / f"Im{i:03d}_{i % 2}.jpg", _image(i))
    ds, layout = scan_sources(tmp_path / "idb1")
    assert layout == "all-idb1" and ds.counts() == {"ALL": 3, "normal": 3}
    for i in range(4):
        _write(tmp_path / "folders" / "blast" / f"b{i}.png", _image(10 + i))
        _write(tmp_path / "folders" / "healthy" / f"h{i}.png", _image(20 + i))
    _write(tmp_path / "folders" / "loose.png", _image(30))
    ds, layout = scan_sources(tmp_path / "folders")
    assert layout == "folders" and ds.labels == ["blast", "healthy"]
    assert [Path(s.path).name for s in ds.skipped] == ["loose.png"]
    assert "class sub-folder" in ds.skipped[0].reason


def test_mixing_idb1_and_idb2_is_refused_with_the_reason(tmp_path: Path) -> None:
    _write(tmp_path / "mix" / "ALL_IDB1" / "Im001_1.jpg", _image(1))
    _write(tmp_path / "mix" / "ALL_IDB2" / "Im001_1.tif", _image(2))
    with pytest.raises(MixedAllIdbError, match="cropped from ALL-IDB1"):
        scan_sources(tmp_path / "mix")
    with pytest.raises(MixedAllIdbError, match="cannot be mixed"):
        scan_sources(tmp_path / "mix", layout="all-idb2")


def test_import_writes_isolated_splits_shards_and_fingerprint(
    ml_stack: None, idb2: Path, tmp_path: Path
) -> None:
    out = tmp_path / "imported"
    result = import_dataset(idb2, out, val_fraction=0.2, test_fraction=0.2, seed=3, shards=2)
    imported, split = load_import(out)
    assert imported == result and result.layout == "all-idb2"
    assert result.counts == {
        "train": {"ALL": 6, "normal": 6},
        "validation": {"ALL": 2, "normal": 2},
        "test": {"ALL": 2, "normal": 2},
    }
    parts = [{s.sha256 for s in p} for p in (split.train, split.val, split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(result.skipped) == 5 and result.fingerprint == split.fingerprint
    assert (out / "labels.txt").read_text() == "0:ALL\n1:normal\n"
    assert result.shards["train"] == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    # Records decode (TIFF re-encoded as PNG) to the labels and pixels of the split.
    files = [out / f for f in result.shards["test"]]
    images, labels = next(iter(tfrecord_dataset(files, 75, 16, training=False)))
    assert images.shape == (4, 75, 75, 3) and sorted(labels.numpy().tolist()) == [0, 0, 1, 1]
    assert float(images.numpy().min()) >= -1.0 and float(images.numpy().max()) <= 1.0
    # Same data, same seed: same fingerprint; a re-import into the same folder is refused.
    again = import_dataset(idb2, tmp_path / "again", val_fraction=0.2, test_fraction=0.2, seed=3, shards=2)
    assert again.split_fingerprints == result.split_fingerprints
    with pytest.raises(DatasetError, match="already holds an import"):
        import_dataset(idb2, out)


def test_import_cli_prints_json_last_and_fails_cleanly(
    ml_stack: None, idb2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer_cli, "setup_logging", lambda level="INFO": None)
    runner = CliRunner()
    ok = runner.invoke(
        trainer_cli.cli,
        ["import", "--data", str(idb2), "--out", str(tmp_path / "o"), "--shards", "1"],
        catch_exceptions=False,
    )
    assert ok.exit_code == 0, ok.output
    summary = json.loads(ok.stdout.strip().splitlines()[-1])
    assert summary["layout"] == "all-idb2" and len(summary["fingerprint"]) == 64
    _write(tmp_path / "mix" / "Im001_1.jpg", _image(1))
    _write(tmp_path / "mix" / "Im002_0.tif", _image(2))
    bad = runner.invoke(
        trainer_cli.cli, ["import", "--data", str(tmp_path / "mix"), "--out", str(tmp_path / "o2")]
    )
    assert bad.exit_code == 1 and "cropped from ALL-IDB1" in bad.output
