"""An exclusive lock on an agent's ``state_dir`` so two processes never share one outbox and model store."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one agent per state_dir is then the operator's job
    fcntl = None  # type: ignore[assignment]


class StateLockedError(RuntimeError):
    """Another process holds the state directory."""


class StateLock:
    """``with StateLock(state_dir):`` holds ``state_dir/agent.lock`` (flock) or raises StateLockedError."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "agent.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StateLockedError(
                    f"{self.path} is held by another process: an agent is already running on state_dir "
                    f"{self.path.parent}; stop it first (or give this agent its own state_dir)"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
