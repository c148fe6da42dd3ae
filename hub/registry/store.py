"""Where bundle zips live: a tiny storage interface and its filesystem implementation.

Bundles are content-addressed by the sha256 of the zip (``bundles/ab/abcdef....zip``), so the
same bytes uploaded twice are stored once and a stored file never changes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class BundleStore(Protocol):
    """Storage of verified bundle zips keyed by their sha256."""

    def put(self, src: Path, sha256: str) -> str:
        """Move the file ``src`` (whose digest is ``sha256``) into the store; return its storage key."""
        ...

    def path(self, sha256: str) -> Path:
        """A local path to read the bundle from (raises FileNotFoundError when absent)."""
        ...

    def exists(self, sha256: str) -> bool: ...

    def delete(self, sha256: str) -> None:
        """Remove the bundle (no error when it is already gone)."""
        ...

    def temp_dir(self) -> Path:
        """A folder on the same filesystem for uploads in progress (so ``put`` can rename)."""
        ...


class FilesystemBundleStore:
    """Bundles under ``root/ab/<sha256>.zip``; uploads staged under ``root/.incoming``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _target(self, sha256: str) -> Path:
        if not _SHA_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / f"{sha256}.zip"

    def put(self, src: Path, sha256: str) -> str:
        target = self._target(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            src.unlink()
        else:
            os.replace(src, target)
        return str(target.relative_to(self.root))

    def path(self, sha256: str) -> Path:
        target = self._target(sha256)
        if not target.is_file():
            raise FileNotFoundError(f"bundle {sha256} is missing from the store at {target}")
        return target

    def exists(self, sha256: str) -> bool:
        return self._target(sha256).is_file()

    def delete(self, sha256: str) -> None:
        self._target(sha256).unlink(missing_ok=True)

    def temp_dir(self) -> Path:
        d = self.root / ".incoming"
        d.mkdir(parents=True, exist_ok=True)
        return d
