"""The ``folder`` source: the watch folder a microscope drops images into.

:class:`WatchFolder` is the folder itself. A file is *ready* once its size and mtime stayed the same
for ``settle_s`` (the writer is done). Only files directly in ``watch_dir`` with a supported suffix
count; hidden files (``.name``, what many copy tools write first) are ignored. After a file is handled
it is moved: classified images to ``done_dir``, undecodable ones to ``failed_dir`` with
``<name>.reason.txt`` beside them. A name that already exists at the destination gets a ``-1``,
``-2``... suffix; nothing is overwritten.

:class:`FolderSource` feeds ready files to the pipeline on its own thread (only while a model is
active and intake is open, at most ``batch_size`` per poll) and is each file's ``on_done`` hook: it
moves a file only after its result is safely in the outbox, so a restart never loses an image, and
the outbox's move journal keeps it from being classified twice (moves the journal still lists are
finished when the source starts). A watch folder that cannot be read stops the agent with that error.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from agents.jobs import Job, Outcome, OutcomeKind
from agents.models import ModelManager
from agents.outbox import Outbox
from agents.pipeline import Pipeline
from agents.sources.base import Halt, SourceContext, SourceThread
from shared.bundle import sha256_file
from shared.logs import kv
from shared.preprocessing import SUPPORTED_SUFFIXES

log = logging.getLogger(__name__)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    stable_since: float


class WatchFolder:
    """Polls ``watch_dir``; :meth:`poll` returns the files ready to classify, oldest first."""

    def __init__(
        self,
        watch_dir: Path,
        done_dir: Path,
        failed_dir: Path,
        settle_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.watch_dir, self.done_dir, self.failed_dir = Path(watch_dir), Path(done_dir), Path(failed_dir)
        self.settle_s = settle_s
        self._clock = clock
        self._seen: dict[Path, _Seen] = {}
        self._ignored: set[Path] = set()
        self._lock = threading.Lock()  # poll() runs in the feeder, moves in pipeline threads

    def ensure_dirs(self) -> None:
        """Create the watch, done and failed folders if needed."""
        for d in (self.watch_dir, self.done_dir, self.failed_dir):
            d.mkdir(parents=True, exist_ok=True)

    def poll(self) -> list[Path]:
        """Files whose size+mtime have not changed for ``settle_s``, sorted by mtime then name."""
        with self._lock:
            return self._poll()

    def _poll(self) -> list[Path]:
        now = self._clock()
        present: dict[Path, os.stat_result] = {}
        listed: set[Path] = set()
        with os.scandir(self.watch_dir) as it:
            for entry in it:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                path = Path(entry.path)
                listed.add(path)
                if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                    if path not in self._ignored:
                        self._ignored.add(path)
                        log.warning(
                            kv(
                                "file_ignored",
                                path=path,
                                reason="unsupported suffix",
                                supported=",".join(SUPPORTED_SUFFIXES),
                            )
                        )
                    continue
                try:
                    present[path] = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # moved away between listing and stat
        ready: list[tuple[int, str, Path]] = []
        for path, st in present.items():
            seen = self._seen.get(path)
            if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
                self._seen[path] = seen = _Seen(st.st_size, st.st_mtime_ns, now)
                if self.settle_s > 0:
                    continue
            if now - seen.stable_since >= self.settle_s:
                ready.append((st.st_mtime_ns, path.name, path))
        for gone in set(self._seen) - set(present):
            del self._seen[gone]
        self._ignored &= listed
        return [p for _, _, p in sorted(ready)]

    def mark_done(self, path: Path) -> Path:
        """Move a classified file to ``done_dir``; returns where it went."""
        return self._move(path, self.done_dir)

    def mark_failed(self, path: Path, reason: str) -> Path:
        """Move an unusable file to ``failed_dir`` and write ``<name>.reason.txt`` with ``reason``."""
        dest = self._move(path, self.failed_dir, reason=reason.rstrip() + "\n")
        log.warning(kv("image_failed", path=path, moved_to=dest, reason=reason))
        return dest

    def _move(self, path: Path, folder: Path, reason: str | None = None) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:  # two threads must not pick the same free name
            dest = unique_destination(folder, path.name)
            shutil.move(str(path), str(dest))
            if reason is not None:  # appears complete or not at all
                tmp = dest.with_name(f".{dest.name}.reason.tmp")
                tmp.write_text(reason, encoding="utf-8")
                os.replace(tmp, dest.with_name(dest.name + ".reason.txt"))
            self._seen.pop(path, None)
        return dest


def unique_destination(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/<stem>-<n><suffix>`` for the first n that does not exist yet."""
    dest = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 0
    while dest.exists() or dest.with_name(dest.name + ".reason.txt").exists():
        n += 1
        dest = folder / f"{stem}-{n}{suffix}"
    return dest


class FolderSource:
    """Feeds a :class:`WatchFolder` to the pipeline on a thread until :meth:`stop`.

    Args:
        folder: the watch folder.
        pipeline: where ready files go.
        models: files wait while no model is active.
        outbox: its move journal tells which files already have a committed result.
        halt: told when the folder cannot be read; the agent stops with that error.
        poll_interval_s: wait between polls when there is nothing to do.
        batch_size: most files queued per poll.
    """

    def __init__(
        self,
        folder: WatchFolder,
        pipeline: Pipeline,
        models: ModelManager,
        outbox: Outbox,
        halt: Halt,
        poll_interval_s: float = 0.5,
        batch_size: int = 8,
    ) -> None:
        self.folder = folder
        self.pipeline, self.models, self.outbox = pipeline, models, outbox
        self._halt = halt
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        self._inflight: set[Path] = set()  # submitted and not finished: not submitted again
        self._inflight_lock = threading.Lock()
        self._worker = SourceThread("folder-source", self._run)
        self._stop = self._worker.stopping

    @classmethod
    def from_context(cls, ctx: SourceContext) -> FolderSource:
        """The agent's watch folder (always on: ``watch_dir`` is required), its folders created.

        The folders exist from then on, so a microscope can drop images before a model is loaded.
        """
        cfg = ctx.config
        folder = WatchFolder(cfg.watch_dir, cfg.done_path, cfg.failed_path, cfg.settle_s)
        folder.ensure_dirs()
        return cls(
            folder,
            ctx.pipeline,
            ctx.models,
            ctx.outbox,
            ctx.halt,
            poll_interval_s=cfg.poll_interval_s,
            batch_size=cfg.batch_size,
        )

    def start(self) -> None:
        """Finish the moves a crash interrupted, then start polling."""
        self._finish_pending_moves()
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._worker.stop(timeout)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.feed_once()
        except Exception as exc:  # noqa: BLE001 - handed to the agent, which stops and raises it
            log.error(kv("folder_source_failed", watch_dir=self.folder.watch_dir, error=exc))
            self._halt.fail(exc)

    def feed_once(self) -> int:
        """Queue ready files (as many as the pipeline takes); wait when there is nothing to do.

        Returns how many files were queued.
        """
        if self.models.active is None or self.pipeline.blocked_reason():
            self._stop.wait(self.poll_interval_s)
            return 0
        room = self.pipeline.room()
        if room == 0:
            self.pipeline.wait_for_room(self.poll_interval_s)
            return 0
        with self._inflight_lock:
            ready = [p for p in self.folder.poll() if p not in self._inflight]
        queued = 0
        for path in ready[: min(room, self.batch_size)]:
            with self._inflight_lock:
                self._inflight.add(path)
            job = Job(name=path.name, path=path, on_done=partial(self._job_done, path))
            if not self.pipeline.submit(job):
                self._job_done(path, Outcome(OutcomeKind.STOPPED))
                break
            queued += 1
        if queued == 0:
            self._stop.wait(self.poll_interval_s)
        return queued

    def _job_done(self, path: Path, outcome: Outcome) -> None:
        """Each file's ``on_done`` hook (a pipeline thread): move it as its outcome says.

        Classified (or committed before a crash): to ``done``, then its journal entry is cleared. Not
        decodable: to ``failed`` with the reason. Anything else (no model, unavailable, stopping): it
        stays and is polled again.
        """
        try:
            if outcome.kind in (OutcomeKind.CLASSIFIED, OutcomeKind.ALREADY_DONE):
                self._to_done(path, outcome)
            elif outcome.kind is OutcomeKind.BAD_IMAGE and path.exists():
                try:
                    self.folder.mark_failed(path, outcome.error)
                except OSError as exc:  # the next poll tries the file again
                    log.error(kv("mark_failed_failed", image=path.name, error=exc))
        finally:
            with self._inflight_lock:
                self._inflight.discard(path)

    def _to_done(self, path: Path, outcome: Outcome) -> None:
        journal = self.outbox.pending_move(path) if outcome.kind is OutcomeKind.ALREADY_DONE else None
        try:
            dest = self.folder.mark_done(path)
        except OSError as exc:  # the journal finishes the move at the next start
            log.error(kv("move_to_done_failed", path=path, error=exc))
            return
        self.outbox.clear_move(path)
        if journal is not None:
            log.info(kv("pending_move_finished", source=path, moved_to=dest, result_id=journal.result_id))

    def _finish_pending_moves(self) -> None:
        for move in self.outbox.pending_moves():
            if move.source.exists() and sha256_file(move.source) == move.image_sha256:
                dest = self.folder.mark_done(move.source)
                log.info(
                    kv("pending_move_finished", source=move.source, moved_to=dest, result_id=move.result_id)
                )
            self.outbox.clear_move(move.source)
