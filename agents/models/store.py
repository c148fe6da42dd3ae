"""The model store on disk, under the agent's ``state_dir``::

    models/<name>-<version>/   verified bundle contents (manifest.json + manifest.sig + files)
    models/.staging-*/         a bundle being verified and extracted (removed when done)
    downloads/                 partial downloads, <sha256>.part (see :mod:`agents.models.download`)
    active.json                {"current": ref, "previous": ref | null, "rejected": ref | null}

A *ref* is ``{"name", "version", "dir"}`` (``dir`` is the folder name under ``models/``). ``current``
is loaded at start-up, ``previous`` is the rollback target, ``rejected`` is a version rolled back on
this agent that a retained desired state must not re-install. ``active.json`` is replaced atomically;
a bundle is extracted next to ``models/<name>-<version>`` and renamed into place, so a crash never
leaves a half-written model folder or state file. The store holds no lock: the model manager calls
it under its update lock.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agents.models.errors import ModelError, ModelRefused, Refusal
from shared.bundle import Manifest, verify_bundle
from shared.logs import kv

log = logging.getLogger(__name__)

ModelRef = dict[str, str]


class ModelStore:
    """The files of one agent's models below ``state_dir`` (created on first write)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.models_dir = self.state_dir / "models"
        self.downloads_dir = self.state_dir / "downloads"
        self.active_file = self.state_dir / "active.json"

    def dir_of(self, ref: ModelRef) -> Path:
        """The folder of the model ``ref`` names."""
        return self.models_dir / ref["dir"]

    # --- active.json -------------------------------------------------------------------------

    def read_state(self) -> dict[str, Any]:
        """``active.json`` as a dict (``{}`` before the first model).

        Raises:
            ModelError: the file is unreadable or not a JSON object (the message says to delete it).
        """
        if not self.active_file.exists():
            return {}
        try:
            data = json.loads(self.active_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(
                f"{self.active_file}: unreadable ({exc}); delete it to start without a model"
            ) from exc
        if not isinstance(data, dict):
            raise ModelError(f"{self.active_file}: not a JSON object; delete it to start without a model")
        return data

    def write_state(
        self, current: ModelRef | None, previous: ModelRef | None, rejected: ModelRef | None
    ) -> None:
        """Replace ``active.json`` atomically."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.active_file.with_suffix(".json.tmp")
        tmp.write_text(
            json.dumps({"current": current, "previous": previous, "rejected": rejected}, indent=2),
            encoding="utf-8",
        )
        os.replace(tmp, self.active_file)

    # --- model folders -----------------------------------------------------------------------

    def unpack(
        self,
        bundle: Path,
        public_key: Ed25519PublicKey,
        expected_sha256: str | None,
        active_dir: Path | None,
        expected_identity: tuple[str, str] | None = None,
    ) -> tuple[Manifest, Path]:
        """Verify ``bundle`` and extract it to ``models/<name>-<version>``; returns (manifest, folder).

        An existing folder of that name (a previous model installed again) is replaced by the
        freshly verified files.

        Args:
            expected_identity: (name, version) the signed manifest must carry (a desired model's).

        Raises:
            BundleError: sha256, signature or a file digest does not match (nothing is extracted).
            ModelRefused: the manifest is not ``expected_identity`` (the staged files are removed).
            ModelError: the bundle is the model in ``active_dir``, whose folder is in use.
        """
        self.models_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.models_dir))
        try:
            manifest = verify_bundle(bundle, public_key, staging / "m", expected_sha256=expected_sha256)
            if expected_identity is not None and (manifest.name, manifest.version) != expected_identity:
                name, version = expected_identity
                raise ModelRefused(
                    f"the bundle's signed manifest is {manifest.name} {manifest.version}, but the desired "
                    f"state names {name} {version}: refused, nothing installed; the hub must serve each "
                    f"version's own bundle (upload {name} {version} as built by the trainer, then desire it)",
                    Refusal.IDENTITY_MISMATCH,
                )
            dest = self.models_dir / f"{manifest.name}-{manifest.version}"
            if dest == active_dir:
                raise ModelError(f"{manifest.name} {manifest.version} is already the active model")
            # Re-installing the previous model (a hub-side rollback) re-extracts the same signed files.
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(staging / "m", dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest, dest

    def prune(self, keep: set[str]) -> None:
        """Delete every model folder whose name is not in ``keep`` (staging folders are left alone)."""
        if not self.models_dir.is_dir():
            return
        for d in self.models_dir.iterdir():
            if d.is_dir() and d.name not in keep and not d.name.startswith("."):
                shutil.rmtree(d)
                log.info(kv("model_dir_pruned", dir=d))
