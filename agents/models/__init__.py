"""The agent's models: one package, one concern per module.

- :mod:`agents.models.manager`: :class:`ModelManager`, the worker that applies desired models
  (download, verify, load, smoke-test, swap, roll back) and reports each step as a model event.
- :mod:`agents.models.active`: :class:`ActiveModel` and the leases that keep a backend open while
  images use it.
- :mod:`agents.models.store`: model folders, ``active.json`` and pruning on disk.
- :mod:`agents.models.download`: resumable bundle downloads from the hub's origin only (HTTP Range,
  retries, size cap).
- :mod:`agents.models.smoke`: the reference-image smoke test and its tolerances by precision.
- :mod:`agents.models.verify`: the pinned public key and :func:`verify_model_dir`.
- :mod:`agents.models.trust`: the bounds a desired state must keep (origin, semver, no silent downgrade).
- :mod:`agents.models.ood`: the model's out-of-distribution statistics, loaded with it.
- :mod:`agents.models.errors`: :class:`ModelError`, :class:`DownloadError` and :class:`ModelRefused`
  (an untrusted desired model, with its :class:`Refusal`).

Import from here; the modules import each other directly (never this package), so there is no cycle.
"""

from agents.models.active import ActiveModel, ActiveSlot
from agents.models.download import MAX_BUNDLE_BYTES, BundleDownloader, url_origin
from agents.models.errors import DownloadError, ModelError, ModelRefused, Refusal
from agents.models.manager import BackendMaker, EventFn, ModelManager
from agents.models.smoke import REFERENCE_TOLERANCE, reference_tolerance, smoke_test
from agents.models.store import ModelRef, ModelStore
from agents.models.verify import load_pinned_key, verify_model_dir

__all__ = [
    "MAX_BUNDLE_BYTES",
    "REFERENCE_TOLERANCE",
    "ActiveModel",
    "ActiveSlot",
    "BackendMaker",
    "BundleDownloader",
    "DownloadError",
    "EventFn",
    "ModelError",
    "ModelManager",
    "ModelRef",
    "ModelRefused",
    "ModelStore",
    "Refusal",
    "load_pinned_key",
    "reference_tolerance",
    "smoke_test",
    "url_origin",
    "verify_model_dir",
]
