"""One retention run: archive, then delete, results captured before the cutoff; delete evidence
images stored before theirs (see :mod:`hub.retention`)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import Select, Table, delete, func, select
from sqlalchemy.orm import Session

from hub import audit
from hub.config import RetentionSection
from hub.db.models import Classification
from hub.db.session import Database
from hub.evidence import EvidenceStore
from hub.retention.archive import ArchiveBusy, ArchiveFile, archive_lock, recover_parts
from shared.clock import utcnow
from shared.logs import kv

log = logging.getLogger(__name__)

RETENTION_ACTOR = "retention"
DELETE_CHUNK = 1000  # ids per DELETE statement: under every driver's bound-parameter limit
TABLE = cast(Table, Classification.__table__)


class RetentionError(Exception):
    """Retention cannot run: not configured, or another run holds the archive folder."""


class EvidenceRetention(Protocol):
    """What happens to the evidence images of results retention deletes (none are stored yet)."""

    def before_delete(self, s: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        """In the batch's transaction, after its rows are archived and before they are deleted:
        archive or detach their images (raising rolls the batch back; its rows stay)."""

    def after_commit(self, result_ids: Sequence[uuid.UUID]) -> None:
        """After the batch's rows are gone: delete images no remaining row refers to. Files go only
        now, so a rollback never leaves a row without its image (at worst an orphan file)."""


class NoEvidence:
    """The hub stores no evidence images yet: nothing to do."""

    def before_delete(self, s: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        return None

    def after_commit(self, result_ids: Sequence[uuid.UUID]) -> None:
        return None


@dataclass
class RetentionReport:
    """What one run did (or, dry, would do)."""

    #: results captured before it are deleted (the evidence cutoff when only evidence_days is set)
    cutoff: datetime
    dry_run: bool
    #: results captured before the cutoff when the run began (dry run) or that it archived
    matched: int = 0
    deleted: int = 0
    batches: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None
    archive: Path | None = None
    #: archives of killed runs that this run finished
    recovered: list[Path] = field(default_factory=list)
    #: evidence stored before it is deleted (None: retention.evidence_days unset)
    evidence_cutoff: datetime | None = None
    #: evidence images stored before the evidence cutoff (dry run) or deleted
    evidence_matched: int = 0
    evidence_deleted: int = 0
    #: evidence files without a row (crashed uploads, deleted rows) removed
    orphans_removed: int = 0


def batch_query(cutoff: datetime, size: int) -> Select[Any]:
    """The oldest ``size`` results captured before ``cutoff``, locked: a range of the
    ``(captured_at, id)`` index read forward."""
    return (
        select(TABLE)
        .where(TABLE.c.captured_at < cutoff)
        .order_by(TABLE.c.captured_at, TABLE.c.id)
        .limit(size)
        .with_for_update()
    )


def preview_query(cutoff: datetime) -> Select[int, datetime, datetime]:
    """How many results were captured before ``cutoff``, the oldest and the newest of them."""
    col = TABLE.c.captured_at
    return select(func.count(), func.min(col), func.max(col)).where(col < cutoff)


class Retention:
    """The retention policy of ``section`` applied to ``db`` (see :mod:`hub.retention`).

    Args:
        db: the hub's database.
        section: ``retention.*`` of the hub config.
        clock: now, UTC (tests pass a fixed one).
        evidence: a hook on each batch of results deleted (default: none).
        trigger: who started the runs, recorded in each audit entry (``serve``, ``cli:<os user>``).
        evidence_store: the evidence images; required with ``evidence_days``, and when given its
            orphan files are swept by every run.
    """

    def __init__(
        self,
        db: Database,
        section: RetentionSection,
        *,
        clock: Callable[[], datetime] = utcnow,
        evidence: EvidenceRetention | None = None,
        trigger: str = "serve",
        evidence_store: EvidenceStore | None = None,
    ) -> None:
        self.db = db
        self.evidence_store = evidence_store
        self.section = section
        self.clock = clock
        self.evidence: EvidenceRetention = evidence or NoEvidence()
        self.trigger = trigger

    def run(self, dry_run: bool = False, should_stop: Callable[[], bool] = lambda: False) -> RetentionReport:
        """Archive and delete every result captured before the cutoff, then delete the evidence
        images stored before theirs and sweep orphan evidence files; ``dry_run`` only counts.

        ``should_stop`` is asked between batches (a stopping ``serve``); the run then ends early,
        consistent, and the next one carries on.

        Raises:
            RetentionError: neither ``results_days`` nor ``evidence_days`` set, ``evidence_days`` set
                without an evidence store, or another run holds the archive lock.
            SQLAlchemyError, OSError: the database or a folder failed; committed batches stay
                archived and deleted, the rest is left for the next run.
        """
        days, directory = self.section.results_days, self.section.archive_dir
        evidence_days = self.section.evidence_days
        if days is None and evidence_days is None:
            raise RetentionError(
                "retention.results_days is not set, nor retention.evidence_days, so nothing is ever "
                "deleted; set them (results_days with retention.archive_dir) in the hub config to apply "
                "a retention policy"
            )
        if evidence_days is not None and self.evidence_store is None:
            raise RetentionError(
                "retention.evidence_days is set but this run has no evidence store: build Retention "
                "with evidence_store=services.evidence (or EvidenceStore.from_config)"
            )
        started = self.clock()
        evidence_cutoff = started - timedelta(days=evidence_days) if evidence_days is not None else None
        cutoff = started - timedelta(days=days) if days is not None else evidence_cutoff
        assert cutoff is not None
        report = RetentionReport(cutoff=cutoff, dry_run=dry_run, evidence_cutoff=evidence_cutoff)
        if dry_run:
            if days is not None:
                self._preview(report)
            if evidence_cutoff is not None and self.evidence_store is not None:
                report.evidence_matched = self.evidence_store.count_expired(evidence_cutoff)
            return report
        if days is not None and directory is not None:
            try:
                with archive_lock(directory):
                    self._archive_and_delete(directory, started, report, should_stop)
            except ArchiveBusy as exc:
                raise RetentionError(str(exc)) from None
        if self.evidence_store is not None:
            self._evidence(self.evidence_store, report, should_stop)
        if report.deleted or report.recovered or report.evidence_deleted or report.orphans_removed:
            log.info(
                kv(
                    "retention_done",
                    cutoff=report.cutoff.isoformat(),
                    archived=report.matched,
                    deleted=report.deleted,
                    batches=report.batches,
                    archive=str(report.archive),
                    recovered=len(report.recovered),
                    evidence_deleted=report.evidence_deleted,
                    evidence_orphans_removed=report.orphans_removed,
                )
            )
        return report

    def _archive_and_delete(
        self, directory: Path, started: datetime, report: RetentionReport, should_stop: Callable[[], bool]
    ) -> None:
        report.recovered = recover_parts(directory)
        archive = ArchiveFile(directory, started)
        try:
            while not should_stop() and self._batch(archive, report):
                pass
        finally:
            report.archive = archive.close()  # also after a failure: its batches may be deleted

    def _evidence(
        self, store: EvidenceStore, report: RetentionReport, should_stop: Callable[[], bool]
    ) -> None:
        """Delete evidence stored before the evidence cutoff, a batch per transaction (audited,
        actor ``retention``), each batch's files after its commit; then sweep orphan files."""
        cutoff, size = report.evidence_cutoff, self.section.batch_size
        while cutoff is not None and not should_stop():
            begun = time.time()  # a file written from now on is a new upload of its image: kept
            with self.db.transaction() as s:
                keys = store.expired(s, cutoff, size)
                if not keys:
                    break
                deleted = store.delete_rows(s, keys)
                audit.record(
                    s,
                    RETENTION_ACTOR,
                    "evidence.delete",
                    "evidence",
                    self.clock(),
                    deleted=deleted,
                    cutoff=cutoff.isoformat(),
                    first_sha256=keys[0],
                    last_sha256=keys[-1],
                    trigger=self.trigger,
                )
            report.evidence_matched += len(keys)
            report.evidence_deleted += deleted
            store.delete_files(keys, written_before=begun)  # after the commit: a rollback keeps files
            if len(keys) < size:
                break
        if not should_stop():
            report.orphans_removed = store.sweep()

    def _preview(self, report: RetentionReport) -> RetentionReport:
        with self.db.session() as s:
            count, oldest, newest = s.execute(preview_query(report.cutoff)).one()
        report.matched, report.oldest, report.newest = int(count), oldest, newest
        return report

    def _batch(self, archive: ArchiveFile, report: RetentionReport) -> bool:
        """Archive and delete one batch; True when a full batch went (more may be waiting)."""
        size = self.section.batch_size
        with self.db.transaction() as s:
            rows = [dict(r) for r in s.execute(batch_query(report.cutoff, size)).mappings()]
            if not rows:
                return False
            name = archive.append(rows)  # fsynced before anything is deleted
            self.evidence.before_delete(s, rows)
            ids = [r["id"] for r in rows]
            deleted = 0
            for i in range(0, len(ids), DELETE_CHUNK):
                result = s.execute(delete(TABLE).where(TABLE.c.id.in_(ids[i : i + DELETE_CHUNK])))
                deleted += int(getattr(result, "rowcount", 0) or 0)
            audit.record(
                s,
                RETENTION_ACTOR,
                "results.archive",
                f"archive/{name}",
                self.clock(),
                archived=len(rows),
                deleted=deleted,
                cutoff=report.cutoff.isoformat(),
                first_captured_at=rows[0]["captured_at"].isoformat(),
                last_captured_at=rows[-1]["captured_at"].isoformat(),
                trigger=self.trigger,
            )
        report.matched += len(rows)
        report.deleted += deleted
        report.batches += 1
        report.oldest = report.oldest or rows[0]["captured_at"]
        report.newest = rows[-1]["captured_at"]
        self.evidence.after_commit([r["result_id"] for r in rows])
        return len(rows) == size
