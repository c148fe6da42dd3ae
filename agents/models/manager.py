"""The model manager: install, verify, smoke-test, hot-swap and roll back the agent's model.

A desired model is applied in steps, each reported as a :class:`shared.schemas.ModelEvent`:
``downloading`` (:mod:`agents.models.download`: streamed with the hub token, resumed with HTTP
``Range`` up to ``download_attempts`` times; when every try failed the worker starts over after
``redownload_after_s``; the whole file's sha256 must match the desired state), ``verifying``
(signature + file digests with the pinned public key, extracted into ``models/<name>-<version>`` by
:mod:`agents.models.store`), then a new backend instance loads it and passes the smoke test
(:mod:`agents.models.smoke`: a device that cannot run the validated precision is refused). Only then
is the active model swapped (:mod:`agents.models.active`: inference running on the old backend
finishes there; the old backend is closed once idle), ``active.json`` is rewritten and ``activated``
is published. Any failure publishes ``failed`` with the reason and keeps the current model.
:meth:`ModelManager.rollback` returns to the previous model and remembers the rolled-back version
as *rejected* so the hub's retained desired state does not re-install it.

A desired state is trusted only within bounds, each refusal a ``failed`` event and a logged
``desired_refused`` with its :class:`~agents.models.errors.Refusal`: its ``bundle_url`` must be on
the hub's origin (``hub.url``; checked before any request, so the token goes nowhere else), its
version must be semver, a version below the running one of the same model needs ``rollback: true``
(:meth:`shared.schemas.DesiredModel.downgrades`), and the bundle's signed manifest must carry the
desired name and version (checked before it is moved into ``models/``).

Desired states arrive on the MQTT thread (:meth:`ModelManager.submit`) and are applied one at a time
on the manager's own worker (a supervised loop named ``models``); a newer desired state replaces a
queued older one.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from agents.backends import Backend, BackendError
from agents.models.active import ActiveModel, ActiveSlot, log_model
from agents.models.download import BundleDownloader, HubToken
from agents.models.errors import DownloadError, ModelError, ModelRefused
from agents.models.ood import load_ood
from agents.models.smoke import smoke_test
from agents.models.store import ModelRef, ModelStore
from agents.models.trust import check_trust
from agents.models.verify import load_pinned_key, verify_model_dir
from shared.bundle import BundleError, Manifest, read_manifest
from shared.logs import kv
from shared.loops import Loops
from shared.schemas import DesiredModel, ModelEvent, ModelEventKind

log = logging.getLogger(__name__)

BackendMaker = Callable[[], Backend]
EventFn = Callable[[ModelEvent], None]


class ModelManager:
    """Owns the active model of one agent. Thread-safe; updates run on its own worker thread.

    Args:
        agent_id: reported in every event.
        state_dir: model store and ``active.json`` live here (see :class:`agents.models.store.ModelStore`).
        make_backend: returns a fresh, unloaded backend (one per model).
        public_key_path: the trainer's Ed25519 public key; without it no bundle is accepted.
        hub_token: bearer token for bundle downloads, or a function returning the current one.
        hub_url: the hub's base URL (``hub.url``); bundles are downloaded from its origin only, and
            without it no desired model is downloaded.
        precision: the IR precision asked of the backend; the reference tolerance follows the one the
            backend reports it loaded (``Backend.precision``, e.g. FP32 when INT8 fell back).
        publish_event: receives every :class:`ModelEvent`.
        on_change: called after the active model changed (the agent publishes its status).
        http_timeout_s: connect/read timeout of bundle downloads.
        download_attempts: tries per download; each resumes the partial file with an HTTP Range.
        retry_backoff_s: wait before the first retry, doubled after each failed try.
        redownload_after_s: when every try failed, the worker starts over after this long (the
            partial file is kept), until another desired state arrives.
        loops: the agent's loop registry (the worker runs in it as ``models``).
    """

    def __init__(
        self,
        agent_id: str,
        state_dir: Path,
        make_backend: BackendMaker,
        public_key_path: Path | None,
        hub_token: HubToken = None,
        hub_url: str | None = None,
        precision: str = "FP32",
        publish_event: EventFn | None = None,
        on_change: Callable[[], None] | None = None,
        http_timeout_s: float = 30.0,
        download_attempts: int = 6,
        retry_backoff_s: float = 2.0,
        redownload_after_s: float = 60.0,
        loops: Loops | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.loops = loops or Loops()
        self.store = ModelStore(state_dir)
        self._make_backend = make_backend
        self._public_key_path = public_key_path
        self._precision = precision
        self._publish_event = publish_event or (lambda _e: None)
        self._on_change = on_change or (lambda: None)
        self._stop = threading.Event()
        self._downloader = BundleDownloader(
            self.store.downloads_dir,
            hub_token,
            http_timeout_s,
            download_attempts,
            retry_backoff_s,
            self._stop,
            hub_url,
        )
        self._redownload_after_s = redownload_after_s
        self._slot = ActiveSlot()
        self._update_lock = threading.Lock()  # one install/rollback at a time
        self._last_failed: DesiredModel | None = None
        # Worker state, guarded by _wake: the next desired state, and a failed download to retry.
        self._wake = threading.Condition()
        self._pending: DesiredModel | None = None
        self._retry: tuple[DesiredModel, float] | None = None
        self._worker: threading.Thread | None = None

    # --- reading the active model --------------------------------------------------------------

    @property
    def active(self) -> ActiveModel | None:
        return self._slot.current

    def acquire(self) -> ActiveModel | None:
        """The active model (or None) with its user count raised: it is not closed before :meth:`release`.

        The pipeline acquires per image, so an image preprocessed for a model is classified by that
        model even when a swap happens meanwhile; the old backend closes when its last image is done.
        """
        return self._slot.acquire()

    def release(self, active: ActiveModel) -> None:
        """Give back a model from :meth:`acquire`."""
        self._slot.release(active)

    @contextmanager
    def lease(self) -> Iterator[ActiveModel | None]:
        """The active model (or None), guaranteed not to be closed until the ``with`` block ends."""
        with self._slot.lease() as active:
            yield active

    # --- loading ------------------------------------------------------------------------------

    def verify_dir(self, model_dir: Path) -> Manifest:
        """Check an extracted model folder against the pinned key (see :func:`verify_model_dir`)."""
        return verify_model_dir(model_dir, load_pinned_key(self._public_key_path))

    def _load(self, model_dir: Path, manifest: Manifest) -> ActiveModel:
        """A new backend with ``model_dir`` loaded and smoke-tested, with the model's OOD statistics.

        Raises ModelError/BackendError."""
        backend = self._make_backend()
        try:
            backend.load(model_dir, manifest)
            smoke_test(backend, model_dir, manifest, self._precision)
            ood = load_ood(model_dir, manifest, backend.precision)
        except BaseException:
            backend.close()
            raise
        return ActiveModel(manifest.name, manifest.version, model_dir, manifest, backend, ood=ood)

    def _swap(self, new: ActiveModel, previous_ref: ModelRef | None, rejected: ModelRef | None) -> None:
        old = self._slot.swap(new)
        self.store.write_state(new.ref, previous_ref, rejected)
        if old is not None:
            self._slot.retire(old)
        self.store.prune(keep={new.model_dir.name, *(p["dir"] for p in [previous_ref] if p)})
        log_model("model_active", new)
        self._on_change()

    def load_active(self) -> ActiveModel | None:
        """Load the model ``active.json`` names (at start-up). None when there is none.

        Raises:
            ModelError, BackendError: the recorded model no longer verifies or loads.
        """
        current = self.store.read_state().get("current")
        if not current:
            return None
        model_dir = self.store.dir_of(current)
        with self._update_lock:
            loaded = self._load(model_dir, self.verify_dir(model_dir))
            self._slot.swap(loaded)
        log_model("model_restored", loaded)
        self._on_change()
        return loaded

    # --- installing ----------------------------------------------------------------------------

    def install_bundle(
        self, bundle: Path, expected_sha256: str | None = None, rollout_id: str | None = None
    ) -> ActiveModel:
        """Verify, extract, load, smoke-test and activate a bundle zip already on disk.

        Raises:
            ModelError, BundleError, BackendError: the current model stays active.
        """
        with self._update_lock:
            return self._install(bundle, expected_sha256, rollout_id)

    def _install(
        self,
        bundle: Path,
        expected_sha256: str | None,
        rollout_id: str | None,
        expected_identity: tuple[str, str] | None = None,
    ) -> ActiveModel:
        key = load_pinned_key(self._public_key_path)
        claimed, _, _ = read_manifest(bundle)  # unverified: only names the event
        self._event(
            ModelEventKind.VERIFYING,
            claimed.name,
            claimed.version,
            rollout_id,
            "checking sha256, signature and file digests",
        )
        state = self.store.read_state()
        current = self.active
        manifest, dest = self.store.unpack(
            bundle,
            key,
            expected_sha256,
            active_dir=current.model_dir if current else None,
            expected_identity=expected_identity,
        )
        try:
            loaded = self._load(dest, manifest)
        except BaseException:
            if dest.name != (state.get("previous") or {}).get("dir"):  # keep the rollback target
                shutil.rmtree(dest, ignore_errors=True)
            raise
        rejected = state.get("rejected")
        if rejected and (rejected.get("name"), rejected.get("version")) == (manifest.name, manifest.version):
            rejected = None  # installed on purpose: no longer rejected
        self._swap(loaded, current.ref if current else None, rejected)
        return loaded

    def apply(self, desired: DesiredModel) -> bool:
        """Bring the active model to ``desired`` (blocking). Returns True when a new model was activated.

        Failures are reported as a ``failed`` event; they never raise. An untrusted desired state
        (see the module docstring) is refused before it is downloaded, or, when the bundle is not
        the version desired, before it is installed; refusals are logged as ``desired_refused``.
        """
        with self._update_lock:
            current = self.active
            if current is not None and (current.name, current.version) == (
                desired.model_name,
                desired.model_version,
            ):
                return False
            rejected = self.store.read_state().get("rejected") or {}
            if (rejected.get("name"), rejected.get("version")) == (desired.model_name, desired.model_version):
                self._event_for(
                    desired,
                    ModelEventKind.FAILED,
                    "this version was rolled back on the agent; desire another version",
                )
                return False
            if self._last_failed == desired:
                return False  # the same desired state already failed here (a retained re-delivery)
            try:
                check_trust(self._downloader, desired, current)
                self._event_for(desired, ModelEventKind.DOWNLOADING, desired.bundle_url)
                path = self._downloader.download(desired)
                try:
                    loaded = self._install(
                        path,
                        desired.bundle_sha256,
                        desired.rollout_id,
                        expected_identity=(desired.model_name, desired.model_version),
                    )
                finally:
                    path.unlink(missing_ok=True)
            except ModelRefused as exc:
                self._last_failed = desired
                log.warning(
                    kv(
                        "desired_refused",
                        reason=exc.reason.value,
                        model=desired.model_name,
                        version=desired.model_version,
                        url=desired.bundle_url,
                        detail=str(exc),
                    )
                )
                self._event_for(desired, ModelEventKind.FAILED, str(exc))
                return False
            except DownloadError as exc:
                with self._wake:
                    self._retry = (desired, time.monotonic() + self._redownload_after_s)
                self._event_for(
                    desired, ModelEventKind.FAILED, f"{exc}; retrying in {self._redownload_after_s:g} s"
                )
                return False
            except (ModelError, BackendError, ValueError, OSError) as exc:  # BundleError is a ValueError
                self._last_failed = desired
                self._event_for(desired, ModelEventKind.FAILED, str(exc))
                return False
            self._last_failed = None
            self._event(
                ModelEventKind.ACTIVATED,
                loaded.name,
                loaded.version,
                desired.rollout_id,
                f"device {loaded.backend.device}",
            )
            return True

    def rollback(self) -> ActiveModel:
        """Re-activate the previous model; the rolled-back one is remembered as rejected.

        Raises:
            ModelError: there is no previous model, or it no longer verifies/loads.
        """
        with self._update_lock:
            state = self.store.read_state()
            previous, current = state.get("previous"), state.get("current")
            if not previous:
                raise ModelError("no previous model to roll back to (only one model was ever activated)")
            model_dir = self.store.dir_of(previous)
            try:
                loaded = self._load(model_dir, self.verify_dir(model_dir))
            except (BackendError, BundleError) as exc:
                raise ModelError(f"previous model {previous['name']} {previous['version']}: {exc}") from exc
            self._swap(loaded, None, rejected=current)  # the rejected model is not a rollback target
        if current:
            self._event(
                ModelEventKind.ROLLED_BACK,
                current["name"],
                current["version"],
                None,
                f"now running {loaded.name} {loaded.version}",
            )
        return loaded

    def _event_for(self, desired: DesiredModel, kind: ModelEventKind, detail: str) -> None:
        self._event(kind, desired.model_name, desired.model_version, desired.rollout_id, detail)

    def _event(
        self, kind: ModelEventKind, name: str, version: str, rollout_id: str | None, detail: str
    ) -> None:
        self._publish_event(
            ModelEvent(
                agent_id=self.agent_id,
                event=kind,
                model_name=name,
                model_version=version,
                rollout_id=rollout_id,
                detail=detail[:4096],
            )
        )

    # --- worker -------------------------------------------------------------------------------

    def submit(self, desired: DesiredModel) -> None:
        """Queue ``desired`` for the worker thread (a newer one replaces a queued older one)."""
        with self._wake:
            self._pending = desired
            self._retry = None
            self._wake.notify_all()

    def start(self) -> None:
        """Start the worker thread that applies submitted desired states."""
        self._worker = self.loops.spawn("models", self._work, self._stop)

    def _work(self) -> None:
        while not self._stop.is_set():
            self.loops.beat("models")
            with self._wake:
                self._wake.wait_for(lambda: self._pending is not None or self._stop.is_set(), timeout=1.0)
                desired, self._pending = self._pending, None
                if desired is None and self._retry is not None and time.monotonic() >= self._retry[1]:
                    desired, self._retry = self._retry[0], None  # a download that failed: try again
            if desired is not None and not self._stop.is_set():
                self.apply(desired)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker and close the active backend."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)
        active = self._slot.swap(None)
        if active is not None:
            active.backend.close()
