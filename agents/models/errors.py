"""The model manager's errors.

:class:`ModelError` refuses an update or a start-up model; its message names the model or file and
what to do, and the current model stays active. :class:`DownloadError` is the one kind that may pass
by itself (network, hub down): the manager's worker tries the download again later.
"""

from __future__ import annotations


class ModelError(RuntimeError):
    """A model that cannot be installed or activated; the message says why."""


class DownloadError(ModelError):
    """A bundle download that failed for a reason that may pass (network, hub down): retried later."""
