"""The archive files of result retention: gzipped JSON lines, written so that nothing is deleted
before it is on disk (see :mod:`hub.retention`).

A run appends one gzip member per batch to a hidden ``.results-<time>.jsonl.gz.part`` and fsyncs it
(the folder entry too, when the file is made) before the batch's rows are deleted; the file gets its
final name, ``results-<time>.jsonl.gz``, when the run ends. A ``.part`` left by a killed run is
finished by the next one (:func:`recover_parts`): cut to its complete members, then renamed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from shared.logs import kv

log = logging.getLogger(__name__)

PART_GLOB = ".results-*.jsonl.gz.part"
LOCK_NAME = ".retention.lock"


class ArchiveBusy(Exception):
    """Another retention run holds the archive folder's lock."""


def _json_default(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"cannot archive a {type(value).__name__}")


def archive_line(row: Mapping[str, Any]) -> bytes:
    """One row as its archive line (JSON, every column, newline-terminated)."""
    return json.dumps(dict(row), default=_json_default, ensure_ascii=False).encode() + b"\n"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _final_name(directory: Path, stem: str) -> Path:
    """``directory/stem.jsonl.gz``, or ``stem-2``, ``-3``... when taken (by a file or its part)."""
    n = 1
    while True:
        name = f"{stem}{'' if n == 1 else f'-{n}'}.jsonl.gz"
        if not (directory / name).exists() and not (directory / f".{name}.part").exists():
            return directory / name
        n += 1


class ArchiveFile:
    """One run's archive: gzip members appended to a hidden ``.part`` file and fsynced one by one,
    renamed to its final name by :meth:`close`. Nothing is created until the first batch."""

    def __init__(self, directory: Path, started: datetime) -> None:
        self.directory = directory
        self.stem = f"results-{started.strftime('%Y%m%dT%H%M%SZ')}"
        self.path: Path | None = None
        self._part: Path | None = None
        self._fh: IO[bytes] | None = None
        self._good = 0  # bytes written and fsynced: complete members only

    def append(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """Write ``rows`` as one gzip member and fsync it (and, the first time, the folder entry).

        Returns the name the archive will have once closed.
        """
        member = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip framing
        data = member.compress(b"".join(archive_line(r) for r in rows)) + member.flush()
        if self._fh is None or self.path is None:
            self.path = _final_name(self.directory, self.stem)
            self._part = self.directory / f".{self.path.name}.part"
            self._fh = self._part.open("xb")
            _fsync_dir(self.directory)
        self._fh.write(data)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._good += len(data)
        return self.path.name

    def close(self) -> Path | None:
        """Give the archive its final name (cut to its complete members); None when nothing was written."""
        if self._fh is None or self._part is None or self.path is None:
            return None
        self._fh.truncate(self._good)  # a member cut short by an error, whose rows were never deleted
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        os.replace(self._part, self.path)
        _fsync_dir(self.directory)
        return self.path


def complete_length(path: Path) -> int:
    """How many leading bytes of ``path`` are complete gzip members (a killed run may cut the last)."""
    good = pos = 0
    member = zlib.decompressobj(31)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            data = chunk
            while data:
                try:
                    member.decompress(data)
                except zlib.error:
                    return good
                if not member.eof:
                    pos += len(data)
                    break
                good = pos = pos + len(data) - len(member.unused_data)
                data = member.unused_data
                member = zlib.decompressobj(31)
    return good


def recover_parts(directory: Path) -> list[Path]:
    """Finish the archives of killed runs: each ``.part`` cut to its complete members and renamed
    (deleted when it holds none: no row of it was deleted). Returns the archives finished."""
    finished = []
    for part in sorted(directory.glob(PART_GLOB)):
        size = complete_length(part)
        if size == 0:
            part.unlink()
            continue
        with part.open("r+b") as fh:
            fh.truncate(size)
            os.fsync(fh.fileno())
        final = directory / part.name[1:].removesuffix(".part")
        if final.exists():
            final = _final_name(directory, final.name.removesuffix(".jsonl.gz"))
        os.replace(part, final)
        finished.append(final)
        log.warning(kv("retention_archive_recovered", archive=str(final), bytes=size))
    if finished:
        _fsync_dir(directory)
    return finished


@contextmanager
def archive_lock(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / LOCK_NAME).open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArchiveBusy(
                f"another retention run holds {directory / LOCK_NAME}; it ends by itself, try again later"
            ) from None
        yield  # the lock goes with the file
