"""``credentials.json`` on disk: read strictly, written atomically with mode 0600, and locked
against two writers (see :mod:`agents.credentials`)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from agents.credentials.model import (
    ENROLL_HINT,
    MAX_BYTES,
    CredentialsError,
    StoredCredentials,
    next_path,
)
from agents.models.download import show_origin, url_origin
from shared.logs import kv

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (and no POSIX modes, see _insecure_mode)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


FileKey = tuple[int, int, int, int, int]


def file_key(st: os.stat_result) -> FileKey:
    """What changes whenever the file is replaced or rewritten (rename, size, mtime, chmod)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _insecure_mode(st: os.stat_result) -> bool:
    return os.name != "nt" and bool(st.st_mode & 0o077)


def read_credentials(path: Path, agent_id: str, hub_url: str) -> tuple[StoredCredentials, FileKey]:
    """Read and check ``path``; returns the credentials and the file's identity (for change checks).

    Raises:
        FileNotFoundError: there is no such file (the agent is not enrolled).
        CredentialsError: the file cannot be read, is too large, not a regular file, open to group or
            others, corrupt, or issued to another agent id or by another hub than ``hub_url``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except PermissionError:
        raise CredentialsError(
            f"credentials file {path}: permission denied; it must belong to the user the agent runs as "
            f"(chown it to that user, keep mode 0600)"
        ) from None
    except OSError as exc:
        raise CredentialsError(f"credentials file {path}: cannot open it ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CredentialsError(f"credentials file {path} is not a regular file; {ENROLL_HINT}")
        if _insecure_mode(st):
            raise CredentialsError(
                f"credentials file {path} is open to group or others (mode {stat.S_IMODE(st.st_mode):04o}) "
                f"and holds the agent's secrets: refused; run `chmod 600 {path}`, and if others may have "
                "read it, rotate them with `leukonet agent rotate-credentials --config <agent.yaml>`"
            )
        raw = fh.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise CredentialsError(
            f"credentials file {path} is larger than {MAX_BYTES} bytes: not a credentials file; {ENROLL_HINT}"
        )
    try:
        creds = StoredCredentials.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise CredentialsError(f"credentials file {path} is corrupt ({problems}); {ENROLL_HINT}") from None
    if creds.agent_id != agent_id:
        raise CredentialsError(
            f"credentials file {path} belongs to agent {creds.agent_id!r}, not to this config's agent_id "
            f"{agent_id!r}: refused; give each agent its own state_dir, or {ENROLL_HINT}"
        )
    try:
        hub = show_origin(url_origin(hub_url))
    except ValueError as exc:
        raise CredentialsError(f"hub.url: {exc}; set it to the hub's base URL (http://host:port)") from None
    if creds.hub != hub:
        raise CredentialsError(
            f"credentials file {path} was issued by the hub at {creds.hub}, but hub.url is {hub}: its API "
            f"token goes only to the hub that issued it; set hub.url back, or {ENROLL_HINT} at {hub}"
        )
    return creds, file_key(st)


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CredentialsWriter:
    """Replaces ``path`` atomically: ``with CredentialsWriter(path) as w: ...; w.commit(creds)``.

    Entering creates ``<path>.next`` (mode 0600, exclusive) at once, so a state_dir that cannot take
    the file fails *before* the hub is asked (a rotation kills the old token). :meth:`commit` writes
    and fsyncs it, renames it over ``path`` (``os.replace``), sets 0600 on ``path`` and fsyncs the
    folder: a reader sees the old file or the new one, never a part. Leaving without a commit removes
    the empty ``.next``; a written one whose rename failed is kept (it holds the only copy of the new
    secrets) for :func:`recover_interrupted`.

    Raises:
        CredentialsError: ``<path>.next`` already exists (run :func:`recover_interrupted` first) or
            cannot be created.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.next_path = next_path(path)
        self._fd: int | None = None
        self._written = False

    def __enter__(self) -> CredentialsWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = (
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        )
        try:
            self._fd = os.open(self.next_path, flags, 0o600)
        except FileExistsError:
            raise CredentialsError(
                f"{self.next_path} exists: an earlier enroll or rotation was interrupted; "
                "run `leukonet agent rotate-credentials --config <agent.yaml>` to finish it"
            ) from None
        except OSError as exc:
            raise CredentialsError(
                f"cannot create {self.next_path}: {exc.strerror}; nothing was changed"
            ) from None
        return self

    def commit(self, creds: StoredCredentials) -> None:
        """Write ``creds`` and move them over ``path`` (see the class docstring)."""
        assert self._fd is not None, "commit() outside `with`"
        fd, self._fd = self._fd, None
        try:
            data = creds.file_bytes()
            if os.name != "nt":
                os.fchmod(fd, 0o600)  # exact mode, whatever the umask did
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self._written = True
        os.replace(self.next_path, self.path)
        os.chmod(self.path, 0o600)
        _fsync_dir(self.path.parent)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._written:
            self.next_path.unlink(missing_ok=True)


def write_credentials(path: Path, creds: StoredCredentials) -> None:
    """Write ``creds`` to ``path`` atomically with mode 0600 (:class:`CredentialsWriter`)."""
    with CredentialsWriter(path) as writer:
        writer.commit(creds)


def recover_interrupted(path: Path, agent_id: str, hub_url: str) -> StoredCredentials | None:
    """Finish a write that was interrupted after ``<path>.next`` was complete, or drop a partial one.

    Returns:
        the credentials moved into place, or None when there was nothing to finish.
    """
    staged = next_path(path)
    if not os.path.lexists(staged):
        return None
    try:
        new, _ = read_credentials(staged, agent_id, hub_url)
    except (CredentialsError, FileNotFoundError) as exc:
        log.warning(kv("credentials_next_dropped", path=staged, reason=exc))
        try:
            staged.unlink(missing_ok=True)
        except OSError as err:
            raise CredentialsError(f"{staged} is in the way ({err.strerror}): remove it") from None
        return None
    try:
        old: StoredCredentials | None = read_credentials(path, agent_id, hub_url)[0]
    except (CredentialsError, FileNotFoundError):
        old = None
    if old is not None and old.issued_at >= new.issued_at:
        staged.unlink()
        return None
    os.replace(staged, path)
    os.chmod(path, 0o600)
    _fsync_dir(path.parent)
    log.warning(kv("credentials_recovered", path=path, issued_at=new.issued_at.isoformat()))
    return new


@contextmanager
def credentials_lock(state_dir: Path) -> Iterator[None]:
    """Hold ``state_dir/credentials.lock`` so two enrolls or rotations never race (a running agent,
    which only reads the file, does not take it).

    Raises:
        CredentialsError: another process holds it.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = state_dir / "credentials.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CredentialsError(
                    f"{lock} is held: another `leukonet agent enroll` or `rotate-credentials` is running on "
                    f"state_dir {state_dir}; wait for it to finish"
                ) from None
        yield
    finally:
        os.close(fd)
