"""Retention: results captured more than ``retention.results_days`` ago are archived, then deleted;
evidence images stored more than ``retention.evidence_days`` ago are deleted.

One run (:meth:`Retention.run`; ``leukonet hub retention run``, and every ``retention.interval_s``
in ``leukonet hub serve`` through :class:`RetentionTicker`):

1. locks ``archive_dir/.retention.lock`` (``flock``): one run per archive folder at a time;
2. finishes the archive of a run that was killed (a ``.results-*.jsonl.gz.part`` left behind): cut
   back to its last complete batch and given its final name;
3. in batches of ``retention.batch_size``, one transaction each: select the oldest results captured
   before the cutoff (``FOR UPDATE``), append them to this run's archive as one gzip member, fsync
   the file, delete exactly those ids, audit the batch (actor ``retention``), commit;
4. renames the archive to ``results-<run start, UTC>.jsonl.gz`` and fsyncs the folder.

A row is deleted only once it is in a file whose data and directory entry are fsynced, so a run
killed at any point loses nothing: a batch not yet committed is still in the database and the next
run archives it. A batch killed between its fsync and its commit is archived twice (in the killed
run's file and the next one's): readers of the archives should dedupe by ``result_id``.

Archive format: gzip (one member per batch; ``gzip.open`` and ``zcat`` read them as one stream) of
JSON lines, one object per deleted row with every column of ``classifications`` (timestamps ISO
8601 UTC, ``result_id`` a string).

Evidence images (:mod:`hub.evidence`) have a clock of their own: with ``retention.evidence_days``
the same run deletes, in batches of ``batch_size``, the images stored longer ago than that (no
archive: deleting them is the point), one transaction and one audit entry (actor ``retention``,
action ``evidence.delete``) per batch, and each batch's files after its commit. Every run given the
evidence store then sweeps its folder for files without a row (an upload that crashed between
rename and commit, a deletion killed between commit and unlink) older than an hour. Files go only
after their rows, so a row never points at a missing file. :class:`EvidenceRetention` is a hook on
each batch of *results* deleted, for stores that tie images to results.

Modules: :mod:`~hub.retention.policy` (the run, its queries, the evidence hook),
:mod:`~hub.retention.archive` (the files and the lock), :mod:`~hub.retention.ticker` (``serve``).
"""

from hub.retention.archive import ArchiveFile, complete_length, recover_parts
from hub.retention.policy import (
    RETENTION_ACTOR,
    EvidenceRetention,
    NoEvidence,
    Retention,
    RetentionError,
    RetentionReport,
    batch_query,
    preview_query,
)
from hub.retention.ticker import RetentionTicker

__all__ = [
    "RETENTION_ACTOR",
    "ArchiveFile",
    "EvidenceRetention",
    "NoEvidence",
    "Retention",
    "RetentionError",
    "RetentionReport",
    "RetentionTicker",
    "batch_query",
    "complete_length",
    "preview_query",
    "recover_parts",
]
