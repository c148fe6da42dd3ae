"""Model bundles: a zip of ``manifest.json``, ``manifest.sig`` and the model files.

``manifest.json`` lists the sha256 of every other file and is signed (Ed25519) by the trainer.
Verification checks, in order: the zip's own sha256 (when the caller knows it), the manifest's
size against :class:`BundleLimits` before it is read, the signature over the exact manifest bytes,
the file count and total unpacked size (declared, then counted again while streaming), that the zip
holds only safe relative paths, and every file's sha256. A corrupt zip (bad CRC, broken deflate
stream) is a :class:`BundleError` like any other refusal. Nothing from a bundle is used before
:func:`verify_bundle` returns.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.cells.spec import CellAnalysisSpec, OodSpec
from shared.preprocessing_spec import PreprocessingSpec

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
FORMAT_VERSION = 1  # optional sections (cells, ood) do not change it: absent means off
SEMVER_RE = r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$"


class BundleError(ValueError):
    """A bundle that must not be used; the message says why."""


@dataclass(frozen=True)
class BundleLimits:
    """Caps checked before and while a bundle is read; a bundle over any of them is refused.

    The defaults leave ample room for an Inception V3 bundle (about 250 MB unpacked with every IR,
    8-12 files). Weights barely compress (about 1.1:1) and the XML about 10:1, so a member larger than
    1 MiB that claims more than ``max_ratio``:1 is a zip bomb.
    """

    max_manifest_bytes: int = 1024 * 1024
    max_unpacked_bytes: int = 2 * 1024**3
    max_files: int = 64
    max_ratio: int = 200


DEFAULT_LIMITS = BundleLimits()


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    shape: list[int]
    dtype: str
    layout: str = ""


class Manifest(BaseModel):
    """What a bundle is: identity, contract, provenance, quality and file digests."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    format_version: int = Field(FORMAT_VERSION, title="bundle format version")
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str = Field(pattern=SEMVER_RE, title="semantic version")
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    labels: list[str] = Field(min_length=2, title="class labels, index = output position")
    architecture: str = Field("inception_v3", title="network family")
    input: TensorSpec = Field(title="IR input (uint8 BGR NHWC)")
    output: TensorSpec = Field(title="probabilities output")
    preprocessing: PreprocessingSpec
    artifacts: dict[str, str] = Field(title="role -> file, e.g. ir_fp32 -> ir/fp32/model.xml")
    files: dict[str, str] = Field(title="file -> sha256 of every file but the manifest and signature")
    metrics: dict[str, Any] = Field(default_factory=dict)
    parity: dict[str, float] = Field(default_factory=dict)
    dataset_fingerprint: str = ""
    training: dict[str, Any] = Field(default_factory=dict)
    source_commit: str | None = None
    cells: CellAnalysisSpec | None = Field(None, title="cell analysis of fields (None: whole images)")
    ood: OodSpec | None = Field(None, title="out-of-distribution flag (None: not calibrated)")

    @model_validator(mode="after")
    def _sections_consistent(self) -> Manifest:
        if self.cells is not None:
            rule = self.cells.decision
            missing = [lab for lab in (*rule.positive_labels, rule.negative_label) if lab not in self.labels]
            if missing:
                raise ValueError(f"cells.decision names labels the model does not have: {missing}")
        if self.ood is not None and self.ood.stats_file not in self.files:
            raise ValueError(f"ood.stats_file {self.ood.stats_file!r} is not one of the bundle's files")
        return self


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- keys -------------------------------------------------------------------------------------


def generate_keypair(private_path: str | Path, public_path: str | Path) -> None:
    """Write a new Ed25519 key pair (PKCS8 / SubjectPublicKeyInfo PEM); the private key mode 0600."""
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path, public_path = Path(private_path), Path(public_path)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(priv)
    public_path.write_bytes(pub)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise BundleError(
            f"signing key {path}: cannot load it ({exc}); create one with `leukonet trainer keygen`"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"signing key {path}: not an Ed25519 key")
    return key


def load_public_key(path_or_pem: str | Path | bytes) -> Ed25519PublicKey:
    data = path_or_pem if isinstance(path_or_pem, bytes) else Path(path_or_pem).read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise BundleError(f"public key {path_or_pem!r}: not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"public key {path_or_pem!r}: not an Ed25519 key")
    return key


# --- build ------------------------------------------------------------------------------------


def build_bundle(
    source_dir: str | Path, manifest: Manifest, private_key: Ed25519PrivateKey, out_path: str | Path
) -> str:
    """Zip ``manifest.files`` from ``source_dir`` with the signed manifest. Returns the zip's sha256.

    ``manifest.files`` must already hold each file's sha256 (see :func:`digest_files`).
    """
    source_dir = Path(source_dir)
    for rel, digest in manifest.files.items():
        actual = sha256_file(source_dir / rel)
        if actual != digest:
            raise BundleError(f"{rel}: sha256 {actual} differs from the manifest's {digest}")
    manifest_bytes = manifest.model_dump_json(indent=2).encode()
    signature = private_key.sign(manifest_bytes)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, manifest_bytes)
        zf.writestr(SIGNATURE, signature)
        for rel in sorted(manifest.files):
            zf.write(source_dir / rel, arcname=rel)
    os.replace(tmp, out_path)
    return sha256_file(out_path)


def digest_files(source_dir: str | Path, rel_paths: list[str]) -> dict[str, str]:
    source_dir = Path(source_dir)
    return {rel: sha256_file(source_dir / rel) for rel in rel_paths}


# --- verify -----------------------------------------------------------------------------------


def _safe_name(name: str) -> bool:
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and bool(re.match(r"^[A-Za-z0-9_./-]+$", name))


def _read_member(zf: zipfile.ZipFile, name: str, cap: int) -> bytes:
    """``name``'s bytes, refusing it when its declared or actual size is over ``cap``."""
    info = zf.getinfo(name)
    if info.file_size > cap:
        raise BundleError(f"{name} is {info.file_size} bytes, over the {cap}-byte limit; refusing the bundle")
    with zf.open(info) as src:
        data = src.read(cap + 1)
    if len(data) > cap:
        raise BundleError(f"{name} inflates past the {cap}-byte limit; refusing the bundle")
    return data


def read_manifest(
    bundle: str | Path | bytes, limits: BundleLimits = DEFAULT_LIMITS
) -> tuple[Manifest, bytes, bytes]:
    """Return (manifest, manifest bytes, signature) without checking the signature.

    The manifest and the signature are read only up to ``limits.max_manifest_bytes``.
    """
    src: Any = io.BytesIO(bundle) if isinstance(bundle, bytes) else bundle
    try:
        with zipfile.ZipFile(src) as zf:
            names = set(zf.namelist())
            if MANIFEST not in names or SIGNATURE not in names:
                raise BundleError(f"bundle lacks {MANIFEST} or {SIGNATURE}")
            manifest_bytes = _read_member(zf, MANIFEST, limits.max_manifest_bytes)
            signature = _read_member(zf, SIGNATURE, 1024)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise BundleError(f"bundle is not a readable zip file: {exc}") from exc
    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise BundleError(f"{MANIFEST} is invalid: {first['loc']}: {first['msg']}") from exc
    return manifest, manifest_bytes, signature


def verify_bundle(
    bundle_path: str | Path,
    public_key: Ed25519PublicKey,
    dest_dir: str | Path | None = None,
    expected_sha256: str | None = None,
    limits: BundleLimits = DEFAULT_LIMITS,
) -> Manifest:
    """Verify a bundle and, when ``dest_dir`` is given, extract it there (atomically).

    Raises:
        BundleError: wrong sha256, bad signature, over a limit, a corrupt zip, unsafe or unlisted
            files, or a file's digest differs from the manifest. ``dest_dir`` is left untouched on error.
    """
    bundle_path = Path(bundle_path)
    if expected_sha256 is not None:
        actual = sha256_file(bundle_path)
        if actual != expected_sha256:
            raise BundleError(f"bundle sha256 {actual} differs from the expected {expected_sha256}")
    manifest, manifest_bytes, signature = read_manifest(bundle_path, limits)
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleError(
            "manifest signature does not verify with the pinned public key "
            "(bundle tampered with, or signed by another trainer key)"
        ) from None
    try:
        _check_and_extract(bundle_path, manifest, manifest_bytes, signature, dest_dir, limits)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise BundleError(f"bundle is corrupt ({exc}); download or build it again") from exc
    return manifest


def _check_and_extract(
    bundle_path: Path,
    manifest: Manifest,
    manifest_bytes: bytes,
    signature: bytes,
    dest_dir: str | Path | None,
    limits: BundleLimits,
) -> None:
    with zipfile.ZipFile(bundle_path) as zf:
        infos = {i.filename: i for i in zf.infolist() if not i.is_dir()}
        if len(infos) > limits.max_files:
            raise BundleError(f"bundle holds {len(infos)} files, over the limit of {limits.max_files}")
        content = set(infos) - {MANIFEST, SIGNATURE}
        if content != set(manifest.files):
            extra = sorted(content - set(manifest.files))
            missing = sorted(set(manifest.files) - content)
            raise BundleError(f"bundle files differ from the manifest: extra {extra}, missing {missing}")
        declared = sum(i.file_size for i in infos.values())
        if declared > limits.max_unpacked_bytes:
            raise BundleError(
                f"bundle unpacks to {declared} bytes, over the limit of {limits.max_unpacked_bytes}"
            )
        for name, info in infos.items():
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > 1024 * 1024 and ratio > limits.max_ratio:
                raise BundleError(
                    f"{name} inflates {ratio:.0f}:1 ({info.file_size} bytes), over the {limits.max_ratio}:1 "
                    "limit: a zip bomb, not a model"
                )
        for name in content:
            if not _safe_name(name):
                raise BundleError(f"bundle holds an unsafe path {name!r}")
        for role, rel in manifest.artifacts.items():
            if rel not in manifest.files:
                raise BundleError(f"artifact {role} -> {rel} is not among the bundle's files")
        staging = Path(tempfile.mkdtemp(prefix=".verify-", dir=Path(dest_dir).parent if dest_dir else None))
        try:
            unpacked = 0
            for name in sorted(content):
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                h = hashlib.sha256()
                with zf.open(name) as src, open(target, "wb") as out:
                    while block := src.read(1 << 20):
                        unpacked += len(block)
                        if unpacked > limits.max_unpacked_bytes:  # never trust the declared sizes alone
                            raise BundleError(
                                f"bundle inflates past the limit of {limits.max_unpacked_bytes} bytes"
                            )
                        h.update(block)
                        out.write(block)
                if h.hexdigest() != manifest.files[name]:
                    raise BundleError(f"{name}: sha256 {h.hexdigest()} differs from the manifest")
            if dest_dir is not None:
                (staging / MANIFEST).write_bytes(manifest_bytes)
                (staging / SIGNATURE).write_bytes(signature)
                dest = Path(dest_dir)
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(staging, dest)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def manifest_summary(manifest: Manifest) -> dict[str, Any]:
    return json.loads(manifest.model_dump_json())
