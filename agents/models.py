"""The model manager: install, verify, smoke-test, hot-swap and roll back models.

State on disk (``state_dir``)::

    models/<name>-<version>/   verified bundle contents (manifest.json + manifest.sig + files)
    downloads/                 partial downloads, <sha256>.part (kept across tries, deleted after use)
    active.json                {"current": {...}, "previous": {...} | null, "rejected": {...} | null}

A desired model is applied in steps, each reported as a :class:`shared.schemas.ModelEvent`:
``downloading`` (streamed with the hub token into ``downloads/<sha256>.part``; a broken transfer is
resumed with an HTTP ``Range`` request up to ``download_attempts`` times, and when every try failed
the worker starts over after ``redownload_after_s``; the whole file's sha256 must match the desired
state),
``verifying`` (signature + file digests with the pinned public key, extracted into
``models/<name>-<version>``), then a new backend instance loads it and, when the manifest has a
``reference_image``, must reproduce ``metrics["reference_probabilities"]`` within the
:func:`reference_tolerance` of the precision that actually runs (1e-3 FP32, 1e-2 FP16, the bundle's
BF16 parity tolerance, 5e-2 INT8): a device that cannot run the validated precision is refused. Only
then is the active pointer swapped under a lock (inference running on the old backend finishes
there; the old backend is closed once idle), ``active.json`` is rewritten and ``activated`` is
published. Any failure publishes ``failed`` with the reason and keeps the current model.
:meth:`ModelManager.rollback` returns to the previous model and remembers the rolled-back version
as *rejected* so the hub's retained desired state does not re-install it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agents.backends import Backend, BackendError
from shared.bundle import (
    MANIFEST,
    SIGNATURE,
    BundleError,
    Manifest,
    load_public_key,
    read_manifest,
    sha256_file,
    verify_bundle,
)
from shared.logs import Progress, kv
from shared.loops import Loops
from shared.preprocessing import ImageDecodeError, crop_and_resize, decode_image
from shared.schemas import DesiredModel, ModelEvent, ModelEventKind

log = logging.getLogger(__name__)

# Largest |p - reference| on the reference image, by the precision of the IR that runs. The reference
# probabilities are always the FP32 IR's (trainer.export). FP32 elsewhere differs only by kernel
# rounding; FP16 rounds weights (and activations on GPU/NPU/MYRIAD) to 11-bit significands. INT8
# (NNCF post-training quantization, trainer.int8) snaps weights and activations to 256 levels per
# tensor and the errors add up through the network, so INT8 is a coarser approximation, not a
# rounding of FP32: holding it to FP16's 1e-2 could reject faithful quantizations. 5e-2 leaves room
# for that on the reference image, which is the crop FP32 is surest about (probabilities near 0 and 1
# move least). A wrong IR (other weights, a swapped file, broken kernels) changes that confident
# answer by far more, so the check still catches it; the trainer's own measurement over the test
# split is metrics["int8"].
# BF16 runs the FP32 IR with bfloat16 activations and weights; its tolerance is the one the trainer
# validated it against (the bundle's parity.tolerance_bf16), this value only when that is absent.
REFERENCE_TOLERANCE: dict[str, float] = {"FP32": 1e-3, "FP16": 1e-2, "BF16": 3e-2, "INT8": 5e-2}
MAX_BUNDLE_BYTES = 4 * 1024**3


def reference_tolerance(precision: str, manifest: Manifest) -> float:
    """Largest |p - reference| the smoke test allows for ``precision`` on ``manifest``'s model."""
    if precision == "BF16" and "tolerance_bf16" in manifest.parity:
        return float(manifest.parity["tolerance_bf16"])
    return REFERENCE_TOLERANCE.get(precision, 1e-3)


class ModelError(RuntimeError):
    """A model that cannot be installed or activated; the message says why."""


class DownloadError(ModelError):
    """A bundle download that failed for a reason that may pass (network, hub down): retried later."""


@dataclass
class ActiveModel:
    """A loaded model. ``users`` counts inferences in progress (see :meth:`ModelManager.lease`)."""

    name: str
    version: str
    model_dir: Path
    manifest: Manifest
    backend: Backend
    users: int = field(default=0, compare=False)

    @property
    def ref(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "dir": self.model_dir.name}


BackendMaker = Callable[[], Backend]
EventFn = Callable[[ModelEvent], None]


class ModelManager:
    """Owns the active model of one agent. Thread-safe; updates run on its own worker thread.

    Args:
        agent_id: reported in every event.
        state_dir: model store and ``active.json`` live here.
        make_backend: returns a fresh, unloaded backend (one per model).
        public_key_path: the trainer's Ed25519 public key; without it no bundle is accepted.
        hub_token: bearer token for bundle downloads.
        precision: the IR precision asked of the backend; the reference tolerance follows the one the
            backend reports it loaded (``Backend.precision``, e.g. FP32 when INT8 fell back).
        publish_event: receives every :class:`ModelEvent`.
        on_change: called after the active model changed (the agent publishes its status).
        http_timeout_s: connect/read timeout of bundle downloads.
        download_attempts: tries per download; each resumes the partial file with an HTTP Range.
        retry_backoff_s: wait before the first retry, doubled after each failed try.
        redownload_after_s: when every try failed, the worker starts over after this long (the
            partial file is kept), until another desired state arrives.
    """

    def __init__(
        self,
        agent_id: str,
        state_dir: Path,
        make_backend: BackendMaker,
        public_key_path: Path | None,
        hub_token: str | None = None,
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
        self.state_dir = Path(state_dir)
        self.models_dir = self.state_dir / "models"
        self.downloads_dir = self.state_dir / "downloads"
        self.active_file = self.state_dir / "active.json"
        self._make_backend = make_backend
        self._public_key_path = public_key_path
        self._hub_token = hub_token
        self._precision = precision
        self._publish_event = publish_event or (lambda _e: None)
        self._on_change = on_change or (lambda: None)
        self._http_timeout_s = http_timeout_s
        self._download_attempts = download_attempts
        self._redownload_after_s = redownload_after_s
        self._retry: tuple[DesiredModel, float] | None = None
        self._retry_backoff_s = retry_backoff_s
        self._cond = threading.Condition()
        self._active: ActiveModel | None = None
        self._update_lock = threading.Lock()  # one install/rollback at a time
        self._pending: DesiredModel | None = None
        self._last_failed: DesiredModel | None = None
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    # --- reading the active model --------------------------------------------------------------

    @property
    def active(self) -> ActiveModel | None:
        with self._cond:
            return self._active

    def acquire(self) -> ActiveModel | None:
        """The active model (or None) with its user count raised: it is not closed before :meth:`release`.

        The pipeline acquires per image, so an image preprocessed for a model is classified by that
        model even when a swap happens meanwhile; the old backend closes when its last image is done.
        """
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

    # --- state file ---------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        if not self.active_file.exists():
            return {}
        try:
            data = json.loads(self.active_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(
                f"{self.active_file}: unreadable ({exc}); delete it to start without a model"
            ) from exc
        if not isinstance(data, dict):
            raise ModelError(f"{self.active_file}: not a JSON object; delete it to start without a model")
        return data

    def _write_state(
        self, current: dict[str, str] | None, previous: dict[str, str] | None, rejected: dict[str, str] | None
    ) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.active_file.with_suffix(".json.tmp")
        tmp.write_text(
            json.dumps({"current": current, "previous": previous, "rejected": rejected}, indent=2),
            encoding="utf-8",
        )
        os.replace(tmp, self.active_file)

    # --- loading ------------------------------------------------------------------------------

    def _public_key(self) -> Ed25519PublicKey:
        if self._public_key_path is None:
            raise ModelError(
                "model_public_key is not set in the agent config: bundles cannot be verified; "
                "set it to the trainer's public key PEM"
            )
        try:
            return load_public_key(self._public_key_path)
        except OSError as exc:
            raise ModelError(
                f"model_public_key {self._public_key_path}: cannot read it ({exc.strerror})"
            ) from exc

    def verify_dir(self, model_dir: Path) -> Manifest:
        """Check an extracted model folder against the pinned key (see :func:`verify_model_dir`)."""
        return verify_model_dir(model_dir, self._public_key())

    def _load(self, model_dir: Path, manifest: Manifest) -> ActiveModel:
        """A new backend with ``model_dir`` loaded and smoke-tested. Raises ModelError/BackendError."""
        backend = self._make_backend()
        try:
            backend.load(model_dir, manifest)
            self._smoke_test(backend, model_dir, manifest)
        except BaseException:
            backend.close()
            raise
        return ActiveModel(manifest.name, manifest.version, model_dir, manifest, backend)

    def _smoke_test(self, backend: Backend, model_dir: Path, manifest: Manifest) -> None:
        rel = manifest.artifacts.get("reference_image")
        if rel is None:
            log.info(
                kv(
                    "smoke_test_skipped",
                    model=manifest.name,
                    version=manifest.version,
                    reason="bundle has no reference_image",
                )
            )
            return
        if not backend.runs_network:
            log.info(kv("smoke_test_skipped", model=manifest.name, reason="backend does not run the network"))
            return
        expected = manifest.metrics.get("reference_probabilities")
        if not isinstance(expected, list) or len(expected) != len(manifest.labels):
            raise ModelError(
                f"bundle {manifest.name} {manifest.version}: metrics.reference_probabilities must "
                f"list {len(manifest.labels)} floats when reference_image is present"
            )
        try:
            image = decode_image((model_dir / rel).read_bytes(), rel)
        except ImageDecodeError as exc:
            raise ModelError(f"reference image of {manifest.name} {manifest.version}: {exc}") from exc
        size = manifest.preprocessing.image_size
        crop = crop_and_resize(image, size, manifest.preprocessing.central_fraction)
        got = backend.infer(crop[np.newaxis])[0]
        precision = backend.precision or self._precision
        tol = reference_tolerance(precision, manifest)
        diff = float(np.max(np.abs(got - np.asarray(expected, dtype=np.float32))))
        if diff > tol:
            hint = "; set precision to FP32 to run the bundle's FP32 IR" if precision == "INT8" else ""
            raise ModelError(
                f"smoke test failed: {manifest.name} {manifest.version} ({precision} IR) gives "
                f"{[round(float(p), 5) for p in got]} on its reference image, expected {expected} "
                f"(max difference {diff:.2e} > {tol:g}); the IR does not run correctly here{hint}"
            )
        log.info(
            kv(
                "smoke_test_passed",
                model=manifest.name,
                version=manifest.version,
                precision=precision,
                max_diff=f"{diff:.2e}",
            )
        )

    def _swap(
        self, new: ActiveModel, previous_ref: dict[str, str] | None, rejected: dict[str, str] | None
    ) -> None:
        with self._cond:
            old, self._active = self._active, new
        self._write_state(new.ref, previous_ref, rejected)
        if old is not None:
            with self._cond:
                idle = self._cond.wait_for(lambda: old.users == 0, timeout=60)
            if not idle:
                log.warning(
                    kv("old_backend_busy", model=old.name, version=old.version, action="closing anyway")
                )
            old.backend.close()
        self._prune(keep={new.model_dir.name, *(p["dir"] for p in [previous_ref] if p)})
        log.info(
            kv(
                "model_active",
                model=new.name,
                version=new.version,
                device=new.backend.device,
                precision=new.backend.precision,
            )
        )
        self._on_change()

    def _prune(self, keep: set[str]) -> None:
        if not self.models_dir.is_dir():
            return
        for d in self.models_dir.iterdir():
            if d.is_dir() and d.name not in keep and not d.name.startswith("."):
                shutil.rmtree(d)
                log.info(kv("model_dir_pruned", dir=d))

    def load_active(self) -> ActiveModel | None:
        """Load the model ``active.json`` names (at start-up). None when there is none.

        Raises:
            ModelError, BackendError: the recorded model no longer verifies or loads.
        """
        state = self._read_state()
        current = state.get("current")
        if not current:
            return None
        model_dir = self.models_dir / current["dir"]
        with self._update_lock:
            loaded = self._load(model_dir, self.verify_dir(model_dir))
            with self._cond:
                self._active = loaded
        log.info(
            kv(
                "model_restored",
                model=loaded.name,
                version=loaded.version,
                device=loaded.backend.device,
                precision=loaded.backend.precision,
            )
        )
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

    def _install(self, bundle: Path, expected_sha256: str | None, rollout_id: str | None) -> ActiveModel:
        key = self._public_key()
        self.models_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.models_dir))
        try:
            claimed, _, _ = read_manifest(bundle)  # unverified: only names the event
            self._event(
                ModelEventKind.VERIFYING,
                claimed.name,
                claimed.version,
                rollout_id,
                "checking sha256, signature and file digests",
            )
            manifest = verify_bundle(bundle, key, staging / "m", expected_sha256=expected_sha256)
            dest = self.models_dir / f"{manifest.name}-{manifest.version}"
            current = self.active
            if current is not None and current.model_dir == dest:
                raise ModelError(f"{manifest.name} {manifest.version} is already the active model")
            # Re-installing the previous model (a hub-side rollback) re-extracts the same signed files.
            previous_dir = (self._read_state().get("previous") or {}).get("dir")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(staging / "m", dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        try:
            loaded = self._load(dest, manifest)
        except BaseException:
            if dest.name != previous_dir:  # the active dir was refused above; keep the previous one
                shutil.rmtree(dest, ignore_errors=True)
            raise
        previous = self.active
        rejected = self._read_state().get("rejected")
        if rejected and (rejected.get("name"), rejected.get("version")) == (manifest.name, manifest.version):
            rejected = None  # installed on purpose: no longer rejected
        self._swap(loaded, previous.ref if previous else None, rejected)
        return loaded

    def apply(self, desired: DesiredModel) -> bool:
        """Bring the active model to ``desired`` (blocking). Returns True when a new model was activated.

        Failures are reported as a ``failed`` event and logged; they never raise.
        """
        with self._update_lock:
            current = self.active
            if current is not None and (current.name, current.version) == (
                desired.model_name,
                desired.model_version,
            ):
                return False
            rejected = self._read_state().get("rejected") or {}
            if (rejected.get("name"), rejected.get("version")) == (desired.model_name, desired.model_version):
                self._event(
                    ModelEventKind.FAILED,
                    desired.model_name,
                    desired.model_version,
                    desired.rollout_id,
                    "this version was rolled back on the agent; desire another version",
                )
                return False
            if self._last_failed == desired:
                return False  # the same desired state already failed here (a retained re-delivery)
            self._event(
                ModelEventKind.DOWNLOADING,
                desired.model_name,
                desired.model_version,
                desired.rollout_id,
                desired.bundle_url,
            )
            try:
                path = self._download(desired)
                try:
                    loaded = self._install(path, desired.bundle_sha256, desired.rollout_id)
                finally:
                    path.unlink(missing_ok=True)
                if (loaded.name, loaded.version) != (desired.model_name, desired.model_version):
                    log.warning(
                        kv(
                            "bundle_identity_differs",
                            desired=f"{desired.model_name} {desired.model_version}",
                            bundle=f"{loaded.name} {loaded.version}",
                        )
                    )
            except DownloadError as exc:
                with self._cond:
                    self._retry = (desired, time.monotonic() + self._redownload_after_s)
                self._event(
                    ModelEventKind.FAILED,
                    desired.model_name,
                    desired.model_version,
                    desired.rollout_id,
                    f"{exc}; retrying in {self._redownload_after_s:g} s",
                )
                return False
            except (ModelError, BackendError, ValueError, OSError) as exc:  # BundleError is a ValueError
                self._last_failed = desired
                self._event(
                    ModelEventKind.FAILED,
                    desired.model_name,
                    desired.model_version,
                    desired.rollout_id,
                    str(exc),
                )
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

    def _download(self, desired: DesiredModel) -> Path:
        """Download the desired bundle to ``downloads/<sha256>.part``, resuming after broken transfers.

        The partial file survives failed tries and agent restarts; every try asks the hub for the
        missing tail (``Range: bytes=<size>-``). A server that ignores the range (HTTP 200) restarts
        the file. The complete file must hash to ``desired.bundle_sha256``.

        Raises:
            ModelError: no token, HTTP error other than a transient one, too many failed tries, or a
                sha256 mismatch (the partial file is deleted then).
        """
        if not self._hub_token:
            raise ModelError(
                "hub.token is not set in the agent config: cannot download "
                f"{desired.bundle_url}; set it to a token with the agent role"
            )
        self.downloads_dir.mkdir(parents=True, exist_ok=True)
        part = self.downloads_dir / f"{desired.bundle_sha256}.part"
        backoff = self._retry_backoff_s
        last_error = ""
        for attempt in range(1, self._download_attempts + 1):
            try:
                if self._fetch(desired, part):
                    break
                last_error = "connection closed before the end of the bundle"
            except (requests.RequestException, OSError) as exc:
                last_error = str(exc)
            if attempt == self._download_attempts:
                raise DownloadError(
                    f"download of {desired.bundle_url} failed after {attempt} tries: {last_error} "
                    f"({part.stat().st_size if part.exists() else 0} bytes kept in {part} for the next try)"
                )
            log.warning(
                kv(
                    "download_interrupted",
                    url=desired.bundle_url,
                    attempt=attempt,
                    have_bytes=part.stat().st_size if part.exists() else 0,
                    error=last_error,
                    retry_in_s=backoff,
                )
            )
            if self._stop.wait(backoff):
                raise DownloadError(f"download of {desired.bundle_url} interrupted: the agent is stopping")
            backoff = min(backoff * 2, 300.0) if backoff else 0.0
        actual = sha256_file(part)
        if actual != desired.bundle_sha256:
            part.unlink(missing_ok=True)
            raise ModelError(
                f"downloaded bundle sha256 {actual} differs from the desired "
                f"{desired.bundle_sha256} ({desired.bundle_url})"
            )
        return part

    def _fetch(self, desired: DesiredModel, part: Path) -> bool:
        """One try: append the missing bytes to ``part``. True when the server sent the whole rest."""
        have = part.stat().st_size if part.exists() else 0
        headers = {"Authorization": f"Bearer {self._hub_token}"}
        if have:
            headers["Range"] = f"bytes={have}-"
        with requests.get(
            desired.bundle_url, headers=headers, stream=True, timeout=self._http_timeout_s
        ) as resp:
            if resp.status_code == 416 and have:
                return True  # nothing left to send: the part is complete (the sha256 check decides)
            if resp.status_code not in (200, 206):
                if resp.status_code in (408, 429) or resp.status_code >= 500:
                    raise requests.HTTPError(f"HTTP {resp.status_code} from {desired.bundle_url}")
                part.unlink(missing_ok=True)
                raise ModelError(
                    f"download of {desired.bundle_url} failed: HTTP {resp.status_code} {resp.text[:200]!r}"
                )
            if resp.status_code == 200:
                have = 0  # the server ignored the range: start over
            remaining = int(resp.headers.get("Content-Length") or 0)
            expected_total = have + remaining if remaining else 0
            if expected_total > MAX_BUNDLE_BYTES:
                raise ModelError(f"{desired.bundle_url}: bundle larger than 4 GiB; refusing it")
            # Keep what arrived before a connection broke (urllib3 would otherwise raise and drop the
            # partly read chunk); a short body is detected below and resumed by the next try.
            resp.raw.enforce_content_length = False
            received = 0
            with (
                open(part, "r+b" if have else "wb") as out,
                Progress(
                    expected_total, f"download {desired.model_name} {desired.model_version}", log, unit="B"
                ) as bar,
            ):
                out.seek(have)
                out.truncate()
                bar.update(have)
                try:
                    for chunk in resp.iter_content(1 << 18):
                        received += len(chunk)
                        if have + received > MAX_BUNDLE_BYTES:
                            raise ModelError(f"{desired.bundle_url}: bundle larger than 4 GiB; refusing it")
                        out.write(chunk)
                        bar.update(len(chunk))
                finally:
                    out.flush()
                    os.fsync(out.fileno())
        return not remaining or received >= remaining

    def rollback(self) -> ActiveModel:
        """Re-activate the previous model; the rolled-back one is remembered as rejected.

        Raises:
            ModelError: there is no previous model, or it no longer verifies/loads.
        """
        with self._update_lock:
            state = self._read_state()
            previous, current = state.get("previous"), state.get("current")
            if not previous:
                raise ModelError("no previous model to roll back to (only one model was ever activated)")
            model_dir = self.models_dir / previous["dir"]
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
        with self._cond:
            self._pending = desired
            self._retry = None
            self._cond.notify_all()

    def start(self) -> None:
        """Start the worker thread that applies submitted desired states."""
        self._worker = self.loops.spawn("models", self._work, self._stop)

    def _work(self) -> None:
        while not self._stop.is_set():
            self.loops.beat("models")
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._stop.is_set(), timeout=1.0)
                desired, self._pending = self._pending, None
                if desired is None and self._retry is not None and time.monotonic() >= self._retry[1]:
                    desired, self._retry = self._retry[0], None  # a download that failed: try again
            if desired is not None and not self._stop.is_set():
                self.apply(desired)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker and close the active backend."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout)
        with self._cond:
            active, self._active = self._active, None
        if active is not None:
            active.backend.close()


def verify_model_dir(model_dir: Path, public_key: Ed25519PublicKey) -> Manifest:
    """Verify an extracted bundle folder: manifest signature and every listed file's sha256.

    Raises:
        ModelError: a file is missing, the signature does not verify, or a digest differs.
    """
    try:
        manifest_bytes = (model_dir / MANIFEST).read_bytes()
        signature = (model_dir / SIGNATURE).read_bytes()
    except OSError as exc:
        raise ModelError(
            f"model folder {model_dir}: {exc.strerror} ({exc.filename}); is it an extracted bundle?"
        ) from exc
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise ModelError(
            f"model folder {model_dir}: manifest signature does not verify with the pinned public key"
        ) from None
    try:
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValueError as exc:
        raise ModelError(f"model folder {model_dir}: {MANIFEST} is invalid: {exc}") from exc
    for rel, digest in manifest.files.items():
        path = model_dir / rel
        if not path.is_file() or sha256_file(path) != digest:
            raise ModelError(f"model folder {model_dir}: {rel} is missing or differs from the manifest")
    return manifest
