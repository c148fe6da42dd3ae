"""Trust in models on disk: the pinned public key and the check of an extracted bundle folder.

A bundle zip is verified by :func:`shared.bundle.verify_bundle` while it is extracted; a folder that
was extracted earlier (the active or previous model at start-up or rollback, or ``leukonet agent
classify --model-dir``) is verified again by :func:`verify_model_dir` before it is loaded, so a file
changed on disk is never run.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agents.models.errors import ModelError
from shared.bundle import MANIFEST, SIGNATURE, Manifest, load_public_key, sha256_file


def load_pinned_key(path: Path | None) -> Ed25519PublicKey:
    """The trainer's public key from the agent config's ``model_public_key``.

    Raises:
        ModelError: the path is not set or the file cannot be read (the message says what to set).
    """
    if path is None:
        raise ModelError(
            "model_public_key is not set in the agent config: bundles cannot be verified; "
            "set it to the trainer's public key PEM"
        )
    try:
        return load_public_key(path)
    except OSError as exc:
        raise ModelError(f"model_public_key {path}: cannot read it ({exc.strerror})") from exc


def verify_model_dir(model_dir: Path, public_key: Ed25519PublicKey) -> Manifest:
    """Verify an extracted bundle folder: manifest signature and every listed file's sha256.

    Raises:
        ModelError: a file is missing, the signature does not verify, or a digest differs.
    """
    try:
        manifest_bytes = (model_dir / MANIFEST).read_bytes()
        signature = (model_dir / SIGNATURE).read_bytes()
    except OSError as exc:
        raise ModelError(
            f"model folder {model_dir}: {exc.strerror} ({exc.filename}); is it an extracted bundle?"
        ) from exc
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise ModelError(
            f"model folder {model_dir}: manifest signature does not verify with the pinned public key"
        ) from None
    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValueError as exc:
        raise ModelError(f"model folder {model_dir}: {MANIFEST} is invalid: {exc}") from exc
    for rel, digest in manifest.files.items():
        path = model_dir / rel
        if not path.is_file() or sha256_file(path) != digest:
            raise ModelError(f"model folder {model_dir}: {rel} is missing or differs from the manifest")
    return manifest
