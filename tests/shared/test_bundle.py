import zipfile
from pathlib import Path

import numpy as np
import pytest

from shared.bundle import (
    BundleError,
    BundleLimits,
    Manifest,
    TensorSpec,
    build_bundle,
    digest_files,
    generate_keypair,
    load_private_key,
    load_public_key,
    sha256_file,
    verify_bundle,
)
from shared.preprocessing import PreprocessingSpec


@pytest.fixture
def keys(tmp_path):
    generate_keypair(tmp_path / "k" / "signing.pem", tmp_path / "k" / "signing.pub.pem")
    assert (tmp_path / "k" / "signing.pem").stat().st_mode & 0o777 == 0o600
    priv = load_private_key(tmp_path / "k" / "signing.pem")
    return priv, load_public_key(tmp_path / "k" / "signing.pub.pem")


def _bundle(tmp_path: Path, priv) -> tuple[Path, str]:
    src = tmp_path / "src"
    (src / "ir").mkdir(parents=True)
    (src / "model.pb").write_bytes(b"pb" * 100)
    (src / "ir" / "model.xml").write_text("<xml/>")
    files = digest_files(src, ["model.pb", "ir/model.xml"])
    m = Manifest(
        name="leuko",
        version="1.0.0",
        labels=["ALL", "normal"],
        input=TensorSpec(name="input", shape=[1, 75, 75, 3], dtype="uint8", layout="NHWC"),
        output=TensorSpec(name="probabilities", shape=[1, 2], dtype="float32"),
        preprocessing=PreprocessingSpec(image_size=75),
        artifacts={"ir_fp32": "ir/model.xml"},
        files=files,
    )
    out = tmp_path / "b.zip"
    return out, build_bundle(src, m, priv, out)


def test_good_bundle_verifies_and_extracts(tmp_path, keys):
    priv, pub = keys
    path, digest = _bundle(tmp_path, priv)
    assert digest == sha256_file(path)
    dest = tmp_path / "out"
    m = verify_bundle(path, pub, dest, expected_sha256=digest)
    assert m.version == "1.0.0"
    assert (dest / "model.pb").read_bytes() == b"pb" * 100
    assert (dest / "manifest.json").exists()


def _rewrite(path: Path, name: str, data: bytes) -> None:
    with zipfile.ZipFile(path) as zf:
        items = {n: zf.read(n) for n in zf.namelist()}
    items[name] = data
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in items.items():
            zf.writestr(n, d)


def test_tampered_file_is_rejected_and_nothing_extracted(tmp_path, keys):
    priv, pub = keys
    path, _ = _bundle(tmp_path, priv)
    _rewrite(path, "model.pb", b"evil")
    dest = tmp_path / "out"
    with pytest.raises(BundleError, match="model.pb: sha256"):
        verify_bundle(path, pub, dest)
    assert not dest.exists()


def test_edited_manifest_fails_signature(tmp_path, keys):
    priv, pub = keys
    path, _ = _bundle(tmp_path, priv)
    with zipfile.ZipFile(path) as zf:
        text = zf.read("manifest.json").decode()
    _rewrite(path, "manifest.json", text.replace("1.0.0", "9.9.9").encode())
    with pytest.raises(BundleError, match="signature"):
        verify_bundle(path, pub)


def test_other_key_wrong_digest_and_extra_file(tmp_path, keys):
    priv, pub = keys
    path, digest = _bundle(tmp_path, priv)
    generate_keypair(tmp_path / "o.pem", tmp_path / "o.pub")
    with pytest.raises(BundleError, match="signature"):
        verify_bundle(path, load_public_key(tmp_path / "o.pub"))
    with pytest.raises(BundleError, match="expected"):
        verify_bundle(path, pub, expected_sha256="0" * 64)
    _rewrite(path, "../escape.txt", b"x")
    with pytest.raises(BundleError, match="extra"):
        verify_bundle(path, pub)


def test_not_a_zip(tmp_path, keys):
    p = tmp_path / "x.zip"
    p.write_bytes(b"nope")
    with pytest.raises(BundleError, match="not a zip"):
        verify_bundle(p, keys[1])


# --- hostile bundles: every cap holds before the bytes are trusted -------------------------------


def _signed(tmp_path: Path, priv, files: dict[str, bytes], metrics_pad: int = 0) -> Path:
    """A properly signed bundle of ``files`` (the signature does not make it safe to unpack)."""
    src = tmp_path / "hostile-src"
    src.mkdir(exist_ok=True)
    for name, data in files.items():
        (src / name).write_bytes(data)
    m = Manifest(
        name="leuko",
        version="1.0.0",
        labels=["ALL", "normal"],
        input=TensorSpec(name="input", shape=[1, 75, 75, 3], dtype="uint8", layout="NHWC"),
        output=TensorSpec(name="probabilities", shape=[1, 2], dtype="float32"),
        preprocessing=PreprocessingSpec(image_size=75),
        artifacts={},
        files=digest_files(src, list(files)),
        metrics={"pad": "x" * metrics_pad},
    )
    out = tmp_path / "hostile.zip"
    build_bundle(src, m, priv, out)
    return out


def test_a_manifest_over_its_cap_is_refused_before_it_is_read(tmp_path, keys):
    priv, pub = keys
    path = _signed(tmp_path, priv, {"model.pb": b"pb"}, metrics_pad=5000)
    with pytest.raises(BundleError, match=r"manifest.json is \d+ bytes, over the 4096-byte limit"):
        verify_bundle(path, pub, limits=BundleLimits(max_manifest_bytes=4096))
    assert verify_bundle(path, pub).name == "leuko"  # the default cap (1 MiB) takes it


def test_a_signed_zip_bomb_is_refused_from_its_metadata(tmp_path, keys):
    priv, pub = keys
    path = _signed(tmp_path, priv, {"weights.bin": bytes(64 * 1024 * 1024)})  # 64 MiB of zeros: ~1000:1
    with pytest.raises(BundleError, match=r"weights.bin inflates \d+:1 .* zip bomb"):
        verify_bundle(path, pub, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_total_size_and_file_count_caps(tmp_path, keys):
    priv, pub = keys
    rng = np.random.default_rng(0)
    path = _signed(tmp_path, priv, {f"f{i}.bin": rng.bytes(40_000) for i in range(4)})
    with pytest.raises(BundleError, match=r"unpacks to 16\d{4} bytes, over the limit of 100000"):
        verify_bundle(path, pub, limits=BundleLimits(max_unpacked_bytes=100_000))
    with pytest.raises(BundleError, match="holds 6 files, over the limit of 5"):
        verify_bundle(path, pub, limits=BundleLimits(max_files=5))
    assert verify_bundle(path, pub, limits=BundleLimits(max_unpacked_bytes=200_000, max_files=6))


def test_a_corrupt_zip_is_a_bundle_error(tmp_path, keys):
    priv, pub = keys
    path = _signed(tmp_path, priv, {"model.pb": b"weights " * 4000})
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model.pb")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 10] ^= 0xFF  # flip bits inside the deflate stream: bad CRC or a broken stream
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt|differs"):
        verify_bundle(path, pub)
