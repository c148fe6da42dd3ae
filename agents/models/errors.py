"""The model manager's errors.

:class:`ModelError` refuses an update or a start-up model; its message names the model or file and
what to do, and the current model stays active. :class:`DownloadError` is the one kind that may pass
by itself (network, hub down): the manager's worker tries the download again later.
:class:`ModelRefused` is a desired model the agent does not trust (a foreign download origin, a
bundle that is not the version desired, an unannounced downgrade); its :class:`Refusal` says which.
"""

from __future__ import annotations

from enum import Enum


class ModelError(RuntimeError):
    """A model that cannot be installed or activated; the message says why."""


class DownloadError(ModelError):
    """A bundle download that failed for a reason that may pass (network, hub down): retried later."""


class Refusal(str, Enum):
    """Why a desired model was refused as untrusted (logged as ``reason`` of ``desired_refused``)."""

    FOREIGN_ORIGIN = "foreign_origin"  # bundle_url is not on the configured hub (scheme, host, port)
    NOT_SEMVER = "not_semver"  # the desired version is no semantic version: no bundle can carry it
    DOWNGRADE = "downgrade"  # lower than the running version, and the desired is not a rollback
    IDENTITY_MISMATCH = "identity_mismatch"  # the signed manifest names another model or version


class ModelRefused(ModelError):
    """A desired model refused as untrusted: the current model keeps running, nothing is installed."""

    def __init__(self, message: str, reason: Refusal) -> None:
        super().__init__(message)
        self.reason = reason
