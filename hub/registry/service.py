"""The model registry: verify uploaded bundles, store them, list and find them.

An upload is streamed to a temp file (size-limited, hashed on the way), its manifest read, its
signature checked against every trusted Ed25519 key, every file's digest checked
(:func:`shared.bundle.verify_bundle` with ``dest_dir=None``), then the zip is moved into the
content-addressed store and a row written. Nothing from a bundle is trusted before that.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.audit import record
from hub.db.models import Agent, ModelVersion
from hub.db.session import Database
from hub.errors import HubError
from hub.registry.store import BundleStore
from shared.bundle import (
    DEFAULT_LIMITS,
    MANIFEST,
    SIGNATURE,
    BundleError,
    BundleLimits,
    Manifest,
    load_public_key,
    read_manifest,
    verify_bundle,
)
from shared.clock import utcnow
from shared.config import ConfigError
from shared.logs import kv

log = logging.getLogger(__name__)
CHUNK = 1 << 20


class RegistryError(HubError):
    """An upload or lookup the registry refuses; ``status`` and ``code`` map onto the API error."""


def load_trusted_keys(paths: list[Path]) -> list[tuple[Path, Ed25519PublicKey]]:
    """Load every trusted public key; a missing or malformed one is a :class:`ConfigError`."""
    keys = []
    for p in paths:
        try:
            keys.append((p, load_public_key(p)))
        except OSError as exc:
            raise ConfigError(
                f"trusted_keys: cannot read {p} ({exc.strerror}); fix the path in the hub config"
            ) from exc
        except BundleError as exc:
            raise ConfigError(f"trusted_keys: {exc}") from exc
    return keys


def check_contract(manifest: Manifest) -> None:
    """Refuse bundles agents could not run: the IR input/output contract of ARCHITECTURE.md."""
    problems = []
    if "ir_fp32" not in manifest.artifacts:
        problems.append("artifacts lacks ir_fp32")
    if manifest.input.name != "input" or manifest.input.dtype != "uint8" or len(manifest.input.shape) != 4:
        problems.append(
            f"input must be uint8 'input' [1,S,S,3], got {manifest.input.name!r} "
            f"{manifest.input.dtype} {manifest.input.shape}"
        )
    if manifest.output.name != "probabilities" or manifest.output.shape[-1:] != [len(manifest.labels)]:
        problems.append(
            f"output must be 'probabilities' [1,{len(manifest.labels)}], got "
            f"{manifest.output.name!r} {manifest.output.shape}"
        )
    if len(set(manifest.labels)) != len(manifest.labels):
        problems.append("labels repeat")
    if problems:
        raise RegistryError(
            422, "contract_mismatch", "bundle does not follow the model contract: " + "; ".join(problems)
        )


#: ``check(session, name, version, limit)`` -> descriptions of who else still needs that model
#: (e.g. :func:`hub.rollouts.store.model_users`); the composition root passes them in, so the
#: registry knows nothing of the features that use models.
UsageCheck = Callable[[Session, str, str, int], list[str]]


class ModelRegistry:
    """Verified bundles: upload, list, find, and where to read a bundle's bytes.

    Args:
        usage_checks: besides agents running or desiring a model, what else keeps it from being
            deleted (active rollouts, ...).
    """

    def __init__(
        self,
        db: Database,
        store: BundleStore,
        trusted_keys: list[tuple[Path, Ed25519PublicKey]],
        max_bytes: int,
        limits: BundleLimits = DEFAULT_LIMITS,
        usage_checks: Sequence[UsageCheck] = (),
    ) -> None:
        self.db = db
        self.store = store
        self.trusted_keys = trusted_keys
        self.max_bytes = max_bytes
        self.limits = limits
        self.usage_checks = list(usage_checks)

    # --- upload -----------------------------------------------------------------------------
    def upload(self, stream: IO[bytes], uploaded_by: str) -> ModelVersion:
        """Verify and store the bundle read from ``stream``.

        Raises:
            RegistryError: 503 no trusted keys configured; 413 too large; 400 not a bundle;
                422 unsigned, bad signature, tampered or corrupt files, over a bundle cap
                (:class:`shared.bundle.BundleLimits`) or contract mismatch; 409 the
                name + version already exists.
        """
        if not self.trusted_keys:
            raise RegistryError(
                503,
                "uploads_disabled",
                "the hub has no trusted_keys configured, so it cannot verify bundles; add the "
                "trainer's public key PEM to trusted_keys in the hub config",
            )
        fd, tmp_name = tempfile.mkstemp(prefix="upload-", suffix=".zip", dir=self.store.temp_dir())
        tmp = Path(tmp_name)
        try:
            with open(fd, "wb") as out:
                sha256, size = self._copy_limited(stream, out)
            manifest = self._verify(tmp)
            with self.db.session() as s:
                exists = s.scalar(
                    select(ModelVersion.id).where(
                        ModelVersion.name == manifest.name, ModelVersion.version == manifest.version
                    )
                )
            if exists is not None:
                raise RegistryError(
                    409,
                    "model_exists",
                    f"model {manifest.name} {manifest.version} is already registered; "
                    "bump the version to publish a new build",
                )
            key = self.store.put(tmp, sha256)
            row = ModelVersion(
                name=manifest.name,
                version=manifest.version,
                sha256=sha256,
                manifest=manifest.model_dump(mode="json"),
                storage_path=key,
                size_bytes=size,
                uploaded_by=uploaded_by,
            )
            try:
                with self.db.transaction() as s:
                    s.add(row)
                    record(
                        s,
                        uploaded_by,
                        "model.upload",
                        f"model/{row.name}/{row.version}",
                        utcnow(),
                        sha256=sha256,
                        size_bytes=size,
                    )
            except IntegrityError as exc:
                raise RegistryError(
                    409, "model_exists", f"model {manifest.name} {manifest.version} is already registered"
                ) from exc
            log.info(
                kv(
                    "model_registered",
                    name=row.name,
                    version=row.version,
                    sha256=sha256,
                    size=size,
                    by=uploaded_by,
                )
            )
            return row
        finally:
            tmp.unlink(missing_ok=True)

    def _copy_limited(self, stream: IO[bytes], out: IO[bytes]) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        while block := stream.read(CHUNK):
            size += len(block)
            if size > self.max_bytes:
                raise RegistryError(
                    413,
                    "payload_too_large",
                    f"bundle is larger than the hub's limit of {self.max_bytes} bytes; raise "
                    "max_upload_mb in the hub config if it is genuine",
                )
            h.update(block)
            out.write(block)
        if size == 0:
            raise RegistryError(400, "invalid_bundle", "the uploaded bundle is empty")
        return h.hexdigest(), size

    def _verify(self, path: Path) -> Manifest:
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
        except zipfile.BadZipFile as exc:
            raise RegistryError(400, "invalid_bundle", f"the upload is not a zip file: {exc}") from exc
        if MANIFEST not in names:
            raise RegistryError(
                400,
                "invalid_bundle",
                f"the zip has no {MANIFEST}; build bundles with "
                "`leukonet trainer` (shared.bundle.build_bundle)",
            )
        if SIGNATURE not in names:
            raise RegistryError(
                422,
                "unsigned_bundle",
                f"the bundle has no {SIGNATURE}; only bundles signed with a trusted trainer key are accepted",
            )
        try:
            manifest, manifest_bytes, signature = read_manifest(path, self.limits)
        except BundleError as exc:  # a readable zip whose manifest is refused (invalid, over a cap, corrupt)
            raise RegistryError(422, "bundle_rejected", str(exc)) from exc
        key = self._signing_key(manifest_bytes, signature)
        if key is None:
            raise RegistryError(
                422,
                "bad_signature",
                "the manifest signature does not verify with any trusted key (tampered, or "
                "signed by a key missing from trusted_keys)",
            )
        try:
            verified = verify_bundle(path, key, dest_dir=None, limits=self.limits)
        except BundleError as exc:
            raise RegistryError(422, "bundle_rejected", str(exc)) from exc
        check_contract(verified)
        return verified

    def _signing_key(self, manifest_bytes: bytes, signature: bytes) -> Ed25519PublicKey | None:
        for _path, key in self.trusted_keys:
            try:
                key.verify(signature, manifest_bytes)
            except InvalidSignature:
                continue
            return key
        return None

    # --- lookups ----------------------------------------------------------------------------
    def list(self) -> builtins.list[ModelVersion]:
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(ModelVersion).order_by(
                        ModelVersion.name, ModelVersion.created_at.desc(), ModelVersion.id.desc()
                    )
                )
            )

    def get(self, name: str, version: str) -> ModelVersion:
        """The row for ``name`` ``version``; RegistryError 404 when unknown."""
        with self.db.session() as s:
            row = s.scalar(
                select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
            )
        if row is None:
            raise RegistryError(
                404,
                "model_not_found",
                f"model {name} {version} is not registered; list models with GET /api/v1/models",
            )
        return row

    def users(self, name: str, version: str, limit: int = 5) -> builtins.list[str]:
        """Who still needs ``name`` ``version``: agents running or desiring it, and what the
        :data:`UsageCheck` s report (up to ``limit`` of each, described for an error)."""
        found: list[str] = []
        with self.db.session() as s:
            running = s.scalars(
                select(Agent.agent_id)
                .where(Agent.model_name == name, Agent.model_version == version)
                .limit(limit)
            ).all()
            found += [f"agent {a} runs it" for a in running]
            desiring = s.scalars(
                select(Agent.agent_id)
                .where(Agent.desired_model_name == name, Agent.desired_model_version == version)
                .limit(limit)
            ).all()
            found += [f"agent {a} is told to run it" for a in desiring]
            for check in self.usage_checks:
                found += check(s, name, version, limit)
        return found

    def delete(self, name: str, version: str, actor: str) -> ModelVersion:
        """Remove a version nothing uses; its zip goes too unless another version shares the bytes.

        Raises:
            RegistryError: 404 unknown; 409 an agent runs or is told to run it, or a rollout of it
                (or back to it) is in progress (the message names them).
        """
        row = self.get(name, version)
        users = self.users(name, version)
        if users:
            raise RegistryError(
                409,
                "model_in_use",
                f"model {name} {version} is in use and cannot be deleted: {'; '.join(users)}",
            )
        with self.db.transaction() as s:
            s.execute(delete(ModelVersion).where(ModelVersion.id == row.id))
            shared = s.scalar(select(ModelVersion.id).where(ModelVersion.sha256 == row.sha256).limit(1))
            record(
                s,
                actor,
                "model.delete",
                f"model/{name}/{version}",
                utcnow(),
                sha256=row.sha256,
            )
        if shared is None:
            self.store.delete(row.sha256)
        log.info(kv("model_deleted", name=name, version=version, by=actor))
        return row

    def bundle_path(self, row: ModelVersion) -> Path:
        try:
            return self.store.path(row.sha256)
        except FileNotFoundError as exc:
            raise RegistryError(500, "bundle_missing", str(exc)) from exc
