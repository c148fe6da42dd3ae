"""The watch folder a microscope drops images into.

A file is *ready* once its size and mtime stayed the same for ``settle_s`` (the writer is done).
Only files directly in ``watch_dir`` with a supported suffix count; hidden files (``.name``, what
many copy tools write first) are ignored. After a file is handled it is moved: classified images
to ``done_dir``, undecodable ones to ``failed_dir`` with ``<name>.reason.txt`` beside them. A name
that already exists at the destination gets a ``-1``, ``-2``... suffix; nothing is overwritten.
The caller moves a file only after its result is safely in the outbox, so a restart never loses an
image, and the outbox's move journal keeps it from being classified twice.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.logs import kv
from shared.preprocessing import SUPPORTED_SUFFIXES

log = logging.getLogger(__name__)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    stable_since: float


class FolderSource:
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
