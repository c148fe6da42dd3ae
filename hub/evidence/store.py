"""The content-addressed evidence store: image files under one folder, one ``evidence`` row each.

A file lives at ``<dir>/ab/cd/<sha256>`` (the first two byte pairs of its key as folders, so no
folder grows past 65,536 entries); its row (:class:`~hub.evidence.model.EvidenceImage`) says what
it is, who sent it and when. An upload (:meth:`EvidenceStore.put`) is streamed to
``<dir>/tmp/`` while it is hashed and counted, checked (:mod:`hub.evidence.verify`), then inserted
and renamed into place in one transaction: the rename happens before the commit, so a row never
exists without its file. A crash between the two leaves a file without a row, which
:meth:`EvidenceStore.sweep` removes (as it does stale temporary files and files whose row
retention deleted) once older than :data:`ORPHAN_GRACE_S`.

Why a table beside the files rather than a sidecar file per image: retention reads the oldest
evidence by an index instead of walking a folder of millions of files, several hub processes
(gunicorn workers) agree on what exists through the database's unique key, and the review pages to
come join results to their evidence with SQL.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.config import HubConfig
from hub.db.session import Database
from hub.evidence.model import EvidenceImage
from hub.evidence.verify import (
    PREVIEW_TYPES,
    SHA256_RE,
    EvidenceRefused,
    Kind,
    check_digests,
    head_of,
    original_size,
    preview_size,
    sniff,
)
from shared.clock import utcnow
from shared.logs import kv

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: files without a row, and temporary files, younger than this are left alone (an upload may be
#: between its rename and its commit)
ORPHAN_GRACE_S = 3600.0
SWEEP_BATCH = 500


def evidence_json(row: EvidenceImage) -> dict[str, Any]:
    """A stored image's metadata as the API answers it."""
    return {
        "sha256": row.sha256,
        "kind": row.kind,
        "content_type": row.content_type,
        "content_sha256": row.content_sha256,
        "size_bytes": row.size_bytes,
        "width": row.width,
        "height": row.height,
        "agent_id": row.agent_id,
        "stored_at": row.stored_at.isoformat(),
    }


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EvidenceStore:
    """Evidence images under ``directory`` with their rows in ``db`` (see the module docstring).

    Args:
        db: the hub's database (migrated to 0008 or later).
        directory: the evidence folder (``evidence.dir``); created on first write.
        max_bytes: largest upload accepted (``evidence.max_bytes``).
        max_pixels: largest image accepted, width x height (``evidence.max_pixels``).
    """

    def __init__(self, db: Database, directory: Path, max_bytes: int, max_pixels: int) -> None:
        self.db = db
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        #: uploads refused, by code (digest_mismatch, too_large, not_an_image, ...)
        self.refused: Counter[str] = Counter()
        #: uploads stored since start
        self.stored = 0

    @classmethod
    def from_config(cls, config: HubConfig, db: Database) -> EvidenceStore:
        """The store of ``config`` (``evidence.*``, folder :attr:`HubConfig.evidence_dir`) on ``db``."""
        return cls(db, config.evidence_dir, config.evidence.max_bytes, config.evidence.max_pixels)

    def path(self, sha256: str) -> Path:
        """Where the image keyed ``sha256`` lives (whether or not it exists)."""
        if not SHA256_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256[:80]!r}")
        return self.directory / sha256[:2] / sha256[2:4] / sha256

    def find(self, sha256: str) -> EvidenceImage | None:
        with self.db.session() as s:
            return s.get(EvidenceImage, sha256)

    def refuse(self, exc: EvidenceRefused, agent: str, sha256: str) -> EvidenceRefused:
        """Count and log a refused upload; returns ``exc`` for the caller to raise."""
        self.refused[exc.code] += 1
        log.warning(
            kv("evidence_refused", agent=agent, sha256=sha256[:64], code=exc.code, reason=exc.message)
        )
        return exc

    # --- writing ------------------------------------------------------------------------------

    def put(
        self, sha256: str, kind: Kind, declared: str | None, body: IO[bytes], length: int, agent: str
    ) -> tuple[EvidenceImage, bool]:
        """Store the ``length`` bytes of ``body`` as the evidence keyed ``sha256``.

        Returns the row and whether it was stored now (False: it was there already, nothing changed
        and the body was not read).

        Raises:
            EvidenceRefused: 400 (digest, short body), 413 (over ``max_bytes``), 422 (not an image of
                a known type, too many pixels); counted in :attr:`refused`.
        """
        existing = self.find(sha256)
        if existing is not None and self.path(sha256).exists():
            return existing, False
        try:
            return self._put(sha256, kind, declared, body, length, agent, existing is not None)
        except EvidenceRefused as exc:
            raise self.refuse(exc, agent, sha256) from None

    def _put(
        self,
        sha256: str,
        kind: Kind,
        declared: str | None,
        body: IO[bytes],
        length: int,
        agent: str,
        heal: bool,
    ) -> tuple[EvidenceImage, bool]:
        if length > self.max_bytes:
            raise EvidenceRefused(
                413,
                "payload_too_large",
                f"evidence of {length} bytes is over this hub's evidence.max_bytes={self.max_bytes}; send "
                "a preview (evidence.mode: preview on the agent) or raise the hub's limit",
            )
        tmp_dir = self.directory / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{sha256}.{os.getpid()}.{time.monotonic_ns()}.part"
        try:
            digest = self._receive(body, length, tmp)
            check_digests(sha256, kind, declared, digest)
            content_type = sniff(head_of(tmp))
            if content_type is None or (kind == "preview" and content_type not in PREVIEW_TYPES):
                allowed = "JPEG or PNG" if kind == "preview" else "JPEG, PNG, TIFF or BMP"
                raise EvidenceRefused(
                    422, "not_an_image", f"a{'n' if kind == 'original' else ''} {kind} must be {allowed}"
                )
            if kind == "preview":
                width, height = preview_size(tmp.read_bytes(), self.max_pixels)
            else:
                width, height = original_size(tmp, self.max_pixels)
            row = EvidenceImage(
                sha256=sha256,
                kind=kind,
                content_type=content_type,
                content_sha256=digest,
                size_bytes=length,
                width=width,
                height=height,
                agent_id=agent[:64],
                stored_at=utcnow(),
            )
            try:
                self._commit(row, tmp, heal)
            except IntegrityError:  # another upload of the same key won the race: it is stored
                raced = self.find(sha256)
                if raced is None:
                    raise
                return raced, False
            self.stored += 1
            return row, True
        finally:
            tmp.unlink(missing_ok=True)

    def _receive(self, body: IO[bytes], length: int, tmp: Path) -> str:
        """Copy ``length`` bytes of ``body`` to ``tmp`` (fsynced); their sha256."""
        digest = hashlib.sha256()
        received = 0
        with tmp.open("xb") as out:
            while received < length:
                chunk = body.read(min(CHUNK, length - received))
                if not chunk:
                    break
                received += len(chunk)
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if received == 0:
            raise EvidenceRefused(400, "empty_body", "the body is empty: send the image bytes")
        if received < length:
            raise EvidenceRefused(
                400, "short_body", f"the body ended after {received} of the {length} bytes of Content-Length"
            )
        return digest.hexdigest()

    def _commit(self, row: EvidenceImage, tmp: Path, heal: bool) -> None:
        final = self.path(row.sha256)
        with self.db.transaction() as s:
            if heal:  # a row whose file is gone: the new upload replaces both
                s.execute(delete(EvidenceImage).where(EvidenceImage.sha256 == row.sha256))
            s.add(row)
            s.flush()  # IntegrityError now if another upload inserted the key first
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            _fsync_dir(final.parent)

    # --- retention ----------------------------------------------------------------------------

    def expired(self, s: Session, cutoff: datetime, limit: int) -> list[str]:
        """The keys of the oldest ``limit`` images stored before ``cutoff``, locked in ``s``."""
        q = (
            select(EvidenceImage.sha256)
            .where(EvidenceImage.stored_at < cutoff)
            .order_by(EvidenceImage.stored_at, EvidenceImage.sha256)
            .limit(limit)
            .with_for_update()
        )
        return list(s.scalars(q))

    def count_expired(self, cutoff: datetime) -> int:
        with self.db.session() as s:
            return int(s.scalar(select(func.count()).where(EvidenceImage.stored_at < cutoff)) or 0)

    @staticmethod
    def delete_rows(s: Session, keys: Sequence[str]) -> int:
        """Delete the rows of ``keys`` in ``s`` (the caller commits, then calls :meth:`delete_files`)."""
        result = s.execute(delete(EvidenceImage).where(EvidenceImage.sha256.in_(list(keys))))
        return int(getattr(result, "rowcount", 0) or 0)

    def delete_files(self, keys: Iterable[str], written_before: float) -> int:
        """Delete the files of ``keys``, whose rows were deleted; a file written at or after
        ``written_before`` (``time.time()`` seconds: the same image uploaded again meanwhile) is
        kept. Returns how many files were deleted."""
        deleted = 0
        for key in keys:
            path = self.path(key)
            try:
                if path.stat().st_mtime < written_before:
                    path.unlink()
                    deleted += 1
            except FileNotFoundError:
                continue
        return deleted

    def sweep(self, grace_s: float = ORPHAN_GRACE_S) -> int:
        """Delete files without a row and stale temporary files, older than ``grace_s``; returns how
        many. Reads file names folder by folder and asks the database in batches."""
        if not self.directory.is_dir():
            return 0
        oldest = time.time() - grace_s
        removed = 0
        tmp_dir = self.directory / "tmp"
        if tmp_dir.is_dir():
            for entry in os.scandir(tmp_dir):
                removed += self._remove_if_old(Path(entry.path), oldest)
        batch: list[Path] = []
        for first in sorted(os.scandir(self.directory), key=lambda e: e.name):
            if len(first.name) != 2 or not first.is_dir():
                continue
            for second in os.scandir(first.path):
                if not second.is_dir():
                    continue
                batch += [Path(e.path) for e in os.scandir(second.path) if SHA256_RE.match(e.name)]
                if len(batch) >= SWEEP_BATCH:
                    removed += self._sweep_batch(batch, oldest)
                    batch = []
        removed += self._sweep_batch(batch, oldest)
        if removed:
            log.info(kv("evidence_orphans_removed", files=removed, dir=str(self.directory)))
        return removed

    def _sweep_batch(self, paths: list[Path], oldest: float) -> int:
        if not paths:
            return 0
        with self.db.session() as s:
            known = set(
                s.scalars(
                    select(EvidenceImage.sha256).where(EvidenceImage.sha256.in_([p.name for p in paths]))
                )
            )
        return sum(self._remove_if_old(p, oldest) for p in paths if p.name not in known)

    @staticmethod
    def _remove_if_old(path: Path, oldest: float) -> int:
        try:
            if path.stat().st_mtime < oldest:
                path.unlink()
                return 1
        except FileNotFoundError:
            pass
        return 0
