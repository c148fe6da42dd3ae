"""The child process of a ``trainer serve`` job: its arguments, its output, how it is stopped.

A job runs ``leukonet trainer run`` in a child process (see :mod:`trainer.service` for why).
:func:`run_args` turns a job's spec into that command's arguments (no secrets, no publishing);
:class:`StderrForwarder` reads the child's log lines and picks out its structured ``progress``
lines for the hub; :func:`terminate` stops the child's whole process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from shared.logs import parse_kv
from shared.training import JobProgress, TrainingJobSpec

STOP_GRACE_S = 15.0
TAIL_LINES = 30


def run_args(spec: TrainingJobSpec, data: Path, work: Path, checkpoint: Path | None) -> list[str]:
    """``leukonet trainer run`` arguments for ``spec`` (no secrets, no publishing)."""
    args = [
        "run",
        "--data",
        str(data),
        "--work",
        str(work),
        "--name",
        spec.name,
        "--version",
        spec.version,
        "--mode",
        spec.mode,
        "--image-size",
        str(spec.image_size),
        "--depth-multiplier",
        str(spec.depth_multiplier),
        "--steps",
        str(spec.steps),
        "--batch-size",
        str(spec.batch_size),
        "--learning-rate",
        str(spec.learning_rate),
        "--seed",
        str(spec.seed),
        "--class-weighting",
        spec.class_weighting,
        "--augmentations",
        str(spec.augmentations),
    ]
    if checkpoint is not None:
        args += ["--checkpoint", str(checkpoint)]
    if spec.trainable_scopes:
        args += ["--trainable-scopes", ",".join(spec.trainable_scopes)]
    if spec.stage1_steps is not None:
        args += ["--stage1-steps", str(spec.stage1_steps)]
    if spec.positive_label:
        args += ["--positive-label", spec.positive_label]
    if spec.int8:
        args.append("--int8")
    return args


@dataclass
class StderrForwarder:
    """Reads the child's stderr on its own thread (started here) until the stream ends.

    Each line is echoed to this process's stderr and kept in :attr:`tail` (the last
    :data:`TAIL_LINES`); the newest ``progress`` line is kept for :meth:`take`.
    """

    stream: IO[bytes]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    latest: JobProgress | None = None
    changed: bool = False
    phase_changed: bool = False

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="child-stderr", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            sys.stderr.write(line + "\n")
            self.tail.append(line)
            progress = progress_from_line(line)
            if progress is not None:
                with self.lock:
                    self.phase_changed |= self.latest is None or self.latest.phase != progress.phase
                    self.latest, self.changed = progress, True

    def take(self) -> tuple[JobProgress | None, bool]:
        """The newest progress if it changed since the last take, and whether its phase changed."""
        with self.lock:
            progress = self.latest if self.changed else None
            phase = self.phase_changed
            self.changed = self.phase_changed = False
            return progress, phase

    def error_line(self) -> str:
        """Why the child failed, for the hub: its last ``Error:`` line, else its last line."""
        errors = [line for line in self.tail if line.startswith("Error:")]
        return errors[-1] if errors else (self.tail[-1] if self.tail else "no output")


_STANDARD_FIELDS = {"task", "done", "total", "pct", "elapsed_s", "eta_s"}


def progress_from_line(line: str) -> JobProgress | None:
    """A :class:`JobProgress` from a ``... progress task=X done=N total=M eta_s=S k=v`` log line."""
    marker = " progress task="
    at = line.find(marker)
    if at < 0:
        return None
    try:
        _, fields = parse_kv(line[at + 1 :])
        return JobProgress(
            phase=fields["task"][:64],
            done=int(fields["done"]),
            total=int(fields["total"]),
            eta_s=float(fields["eta_s"]) if "eta_s" in fields else None,
            detail={k: v[:64] for k, v in list(fields.items())[:22] if k not in _STANDARD_FIELDS},
        )
    except (KeyError, ValueError, ValidationError):
        return None


def terminate(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, SIGKILL it after :data:`STOP_GRACE_S`."""
    with contextlib.suppress(ProcessLookupError):  # the group ended on its own meanwhile
        os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
