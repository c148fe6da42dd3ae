"""The synthetic smear generator: decodable, deterministic, two classes that differ as they should."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from shared.preprocessing import decode_image
from trainer.synthetic import LABELS, generate_dataset, render_smear


def _dark_fraction(image_bgr: np.ndarray) -> float:
    """Share of pixels as dark as a stained nucleus (RBCs and plasma are much lighter)."""
    grey = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    return float((grey < 150).mean())


def test_generates_decodable_jpegs_of_both_classes(tmp_path: Path) -> None:
    ds = generate_dataset(tmp_path / "d", per_class=6, image_size=96, seed=3)
    assert ds.counts == {"ALL": 6, "normal": 6}
    for label in LABELS:
        files = sorted((tmp_path / "d" / label).glob("*.jpg"))
        assert len(files) == 6
        for f in files:
            image = decode_image(f.read_bytes(), str(f))
            assert image.shape == (96, 96, 3) and image.dtype == np.uint8


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", per_class=2, image_size=80, seed=1)
    b = generate_dataset(tmp_path / "b", per_class=2, image_size=80, seed=1)
    c = generate_dataset(tmp_path / "c", per_class=2, image_size=80, seed=2)
    for label in LABELS:
        for pa, pb, pc in zip(a.files[label], b.files[label], c.files[label], strict=True):
            assert pa.read_bytes() == pb.read_bytes()
            assert pa.read_bytes() != pc.read_bytes()


def test_blasts_carry_more_and_paler_nucleus_than_lymphocytes() -> None:
    # Blasts are bigger (more stained area) but their chromatin is paler than a lymphocyte's
    # dense nucleus: the classes differ on average, and individual images vary.
    rng = np.random.default_rng(0)
    blast = [render_smear(rng, "ALL", 128) for _ in range(12)]
    lympho = [render_smear(rng, "normal", 128) for _ in range(12)]
    assert np.mean([_dark_fraction(i) for i in blast]) > 1.5 * np.mean([_dark_fraction(i) for i in lympho])
    darkest = [float(cv2.cvtColor(i, cv2.COLOR_BGR2GRAY).min()) for i in blast]
    darkest_normal = [float(cv2.cvtColor(i, cv2.COLOR_BGR2GRAY).min()) for i in lympho]
    assert np.mean(darkest) > np.mean(darkest_normal)
    assert np.std([_dark_fraction(i) for i in blast]) > 0  # not one constant picture


def test_refuses_to_mix_into_a_non_empty_folder(tmp_path: Path) -> None:
    generate_dataset(tmp_path, per_class=1, image_size=64, seed=0)
    with pytest.raises(ValueError, match="already holds files"):
        generate_dataset(tmp_path, per_class=1, image_size=64, seed=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"per_class": 0, "image_size": 64}, "per_class"),
        ({"per_class": 1, "image_size": 32}, "too small"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_dataset(tmp_path, seed=0, **kwargs)


def test_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown synthetic label 'AML'"):
        render_smear(np.random.default_rng(0), "AML", 64)
