"""The active model in memory and its leases.

:class:`ActiveSlot` holds the one :class:`ActiveModel` that classifies new images. Every user of the
model leases it (:meth:`ActiveSlot.acquire` / :meth:`ActiveSlot.release`, or :meth:`ActiveSlot.lease`)
for as long as it needs the backend; a swap installs the new model at once, and the old backend is
closed only when its last lease is returned (:meth:`ActiveSlot.retire`). An image preprocessed for a
model is therefore classified by that model even when a swap happens meanwhile. Thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agents.backends import Backend
from agents.models.store import ModelRef
from shared.bundle import Manifest
from shared.logs import kv
from shared.ood import OodModel

log = logging.getLogger(__name__)


@dataclass
class ActiveModel:
    """A loaded model. ``users`` counts inferences in progress (see :meth:`ActiveSlot.lease`);
    ``ood`` holds the statistics that score inputs as unfamiliar (None without a manifest ``ood``)."""

    name: str
    version: str
    model_dir: Path
    manifest: Manifest
    backend: Backend
    users: int = field(default=0, compare=False)
    ood: OodModel | None = field(default=None, compare=False, repr=False)

    @property
    def ref(self) -> ModelRef:
        return {"name": self.name, "version": self.version, "dir": self.model_dir.name}


class ActiveSlot:
    """The active model (or None) and the count of its leases."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: ActiveModel | None = None

    @property
    def current(self) -> ActiveModel | None:
        with self._cond:
            return self._active

    def acquire(self) -> ActiveModel | None:
        """The active model (or None) with its user count raised: it is not closed before :meth:`release`."""
        with self._cond:
            active = self._active
            if active is not None:
                active.users += 1
            return active

    def release(self, active: ActiveModel) -> None:
        """Give back a model from :meth:`acquire`."""
        with self._cond:
            active.users -= 1
            self._cond.notify_all()

    @contextmanager
    def lease(self) -> Iterator[ActiveModel | None]:
        """The active model (or None), guaranteed not to be closed until the ``with`` block ends."""
        active = self.acquire()
        try:
            yield active
        finally:
            if active is not None:
                self.release(active)

    def swap(self, new: ActiveModel | None) -> ActiveModel | None:
        """Make ``new`` the active model at once; returns the one it replaced (still open)."""
        with self._cond:
            old, self._active = self._active, new
        return old

    def retire(self, old: ActiveModel, timeout: float = 60.0) -> None:
        """Close ``old``'s backend once its last lease is returned (or after ``timeout``, logged)."""
        with self._cond:
            idle = self._cond.wait_for(lambda: old.users == 0, timeout=timeout)
        if not idle:
            log.warning(kv("old_backend_busy", model=old.name, version=old.version, action="closing anyway"))
        old.backend.close()


def log_model(event: str, model: ActiveModel) -> None:
    """Log ``event`` (``model_active``, ``model_restored``) with the model and where it runs."""
    log.info(
        kv(
            event,
            model=model.name,
            version=model.version,
            device=model.backend.device,
            precision=model.backend.precision,
        )
    )
