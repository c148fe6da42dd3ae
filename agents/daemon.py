"""The agent process: :func:`build_agent` is its composition root, :meth:`Agent.run` its main loop.

Pipeline per ready file: read bytes -> ``decode_image`` -> ``crop_and_resize`` (size and crop from
the active manifest) -> ``backend.infer`` (a batch of up to ``batch_size`` files) ->
:class:`ClassificationResult` -> outbox (committed) -> MQTT QoS 1 (outbox pump) -> file moved to
``done``. Undecodable files go to ``failed`` with a reason. Without an active model, files wait.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.backends import Backend, BackendError, create_backend
from agents.config import AgentConfig
from agents.link import Link
from agents.models import ActiveModel, ModelError, ModelManager
from agents.outbox import Outbox
from agents.sources.folder import FolderSource
from agents.vitals import InferenceStats, collect_vitals
from shared.logs import kv
from shared.preprocessing import ImageDecodeError, crop_and_resize, decode_image
from shared.schemas import AgentState, AgentStatus, ClassificationResult, ModelEvent, Timings, utcnow

log = logging.getLogger(__name__)

INFERENCE_ERROR_BACKOFF_S = 5.0


@dataclass
class _Prepared:
    path: Path
    sha256: str
    crop: np.ndarray
    started: float
    decode_ms: float
    preprocess_ms: float


class Agent:
    """One running agent. Build it with :func:`build_agent`; everything it uses is passed in."""

    def __init__(
        self,
        config: AgentConfig,
        source: FolderSource,
        outbox: Outbox,
        models: ModelManager,
        stats: InferenceStats,
    ) -> None:
        self.config = config
        self.source = source
        self.outbox = outbox
        self.models = models
        self.stats = stats
        self.link: Link | None = None
        self._paused_until = 0.0

    def attach_link(self, link: Link) -> None:
        self.link = link

    # --- status -------------------------------------------------------------------------------

    def status(self, state: AgentState = AgentState.ONLINE) -> AgentStatus:
        """The agent's status now: active model (None = no model yet), device and vitals."""
        active = self.models.active
        vitals = collect_vitals(self.config.state_path, self.stats, self.outbox.depth())
        return AgentStatus(
            agent_id=self.config.agent_id,
            state=state,
            lab=self.config.lab,
            model_name=active.name if active else None,
            model_version=active.version if active else None,
            device=active.backend.device if active else self.config.device,
            vitals=vitals,
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Prepare folders, finish interrupted moves, restore or install the model, connect."""
        self.source.ensure_dirs()
        self._finish_pending_moves()
        try:
            restored = self.models.load_active()
        except (ModelError, BackendError, ValueError, OSError) as exc:
            log.error(kv("model_restore_failed", error=exc, action="starting without a model"))
            restored = None
        if restored is None and self.config.initial_model is not None:
            try:
                self.models.install_bundle(self.config.initial_model)
            except (ModelError, BackendError, ValueError, OSError) as exc:
                log.error(kv("initial_model_failed", bundle=self.config.initial_model, error=exc))
        if self.models.active is None:
            log.warning(kv("no_model", action="images wait in the watch folder until a model is desired"))
        self.models.start()
        if self.link is not None:
            self.link.start()

    def run(self, stop: threading.Event) -> None:
        """Start, then process the watch folder every ``poll_interval_s`` until ``stop`` is set."""
        self.start()
        log.info(
            kv(
                "agent_running",
                agent_id=self.config.agent_id,
                watch_dir=self.config.watch_dir,
                backend=self.config.backend,
                device=self.config.device,
            )
        )
        try:
            while not stop.is_set():
                n = self.process_once()
                if n == 0:
                    stop.wait(self.config.poll_interval_s)
        finally:
            self.close()

    def close(self) -> None:
        """Say goodbye on MQTT, stop the model worker, close the outbox."""
        if self.link is not None:
            self.link.stop()
        self.models.close()
        self.outbox.close()
        log.info(kv("agent_stopped", agent_id=self.config.agent_id))

    def _finish_pending_moves(self) -> None:
        for move in self.outbox.pending_moves():
            if move.source.exists() and _sha256(move.source) == move.image_sha256:
                dest = self.source.mark_done(move.source)
                log.info(
                    kv("pending_move_finished", source=move.source, moved_to=dest, result_id=move.result_id)
                )
            self.outbox.clear_move(move.source)

    # --- pipeline -----------------------------------------------------------------------------

    def process_once(self) -> int:
        """Classify up to ``batch_size`` ready files; return how many files were handled."""
        if time.monotonic() < self._paused_until:
            return 0
        with self.models.lease() as active:
            if active is None:
                return 0  # files wait for a model
            ready = self.source.poll()[: self.config.batch_size]
            if not ready:
                return 0
            prepared = [p for p in (self._prepare(path, active) for path in ready) if p is not None]
            if prepared:
                self._classify(prepared, active)
            return len(ready)

    def _prepare(self, path: Path, active: ActiveModel) -> _Prepared | None:
        started = time.monotonic()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None  # taken away by someone else meanwhile
        sha = hashlib.sha256(data).hexdigest()
        journal = self.outbox.pending_move(path)
        if journal is not None and journal.image_sha256 == sha:
            self.source.mark_done(path)  # result already committed before a crash
            self.outbox.clear_move(path)
            return None
        try:
            image = decode_image(data, path.name)
        except ImageDecodeError as exc:
            self.source.mark_failed(path, str(exc))
            return None
        decoded = time.monotonic()
        spec = active.manifest.preprocessing
        crop = crop_and_resize(image, spec.image_size, spec.central_fraction)
        done = time.monotonic()
        return _Prepared(path, sha, crop, started, (decoded - started) * 1e3, (done - decoded) * 1e3)

    def _classify(self, items: list[_Prepared], active: ActiveModel) -> None:
        t0 = time.monotonic()
        try:
            probs = active.backend.infer(np.stack([p.crop for p in items]))
        except BackendError as exc:
            self._paused_until = time.monotonic() + INFERENCE_ERROR_BACKOFF_S
            log.error(
                kv(
                    "inference_failed",
                    model=active.name,
                    version=active.version,
                    files=len(items),
                    error=exc,
                    retry_in_s=INFERENCE_ERROR_BACKOFF_S,
                )
            )
            return
        per_image_ms = (time.monotonic() - t0) * 1e3 / len(items)
        labels = active.manifest.labels
        for item, row in zip(items, probs, strict=True):
            best = int(np.argmax(row))
            probabilities = {
                label: min(max(float(p), 0.0), 1.0) for label, p in zip(labels, row, strict=True)
            }
            confidence = probabilities[labels[best]]
            total_ms = (time.monotonic() - item.started) * 1e3
            result = ClassificationResult(
                agent_id=self.config.agent_id,
                lab=self.config.lab,
                image_name=item.path.name,
                image_sha256=item.sha256,
                label=labels[best],
                confidence=confidence,
                probabilities=probabilities,
                low_confidence=confidence < self.config.low_confidence_threshold,
                model_name=active.name,
                model_version=active.version,
                device=active.backend.device,
                timings=Timings(
                    decode_ms=item.decode_ms,
                    preprocess_ms=item.preprocess_ms,
                    inference_ms=per_image_ms,
                    total_ms=total_ms,
                ),
                captured_at=utcnow(),
            )
            self.outbox.put(result, source=item.path)
            if self.link is not None:
                self.link.notify_outbox()
            self.source.mark_done(item.path)
            self.outbox.clear_move(item.path)
            self.stats.record(per_image_ms)
            log.info(
                kv(
                    "classified",
                    image=item.path.name,
                    label=result.label,
                    confidence=f"{confidence:.3f}",
                    model=f"{active.name}-{active.version}",
                    ms=f"{total_ms:.1f}",
                )
            )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def build_agent(config: AgentConfig, connect: bool = True) -> Agent:
    """Compose an agent from ``config``: source, outbox, backend factory, model manager, MQTT link.

    Nothing starts until :meth:`Agent.run` (or :meth:`Agent.start`). ``connect=False`` builds an
    agent without MQTT (used by ``leukonet agent rollback`` and offline tests).

    Raises:
        ValueError: unknown backend name.
        BackendError: the backend cannot run on this machine (e.g. unknown OpenVINO device).
    """
    state_dir = config.state_path
    state_dir.mkdir(parents=True, exist_ok=True)
    precision = config.effective_precision()
    # Fail at start-up, not at the first model: unknown backend names and devices.
    create_backend(config.backend, config.device, precision, config.performance_hint).close()

    def make_backend() -> Backend:
        return create_backend(config.backend, config.device, precision, config.performance_hint)

    outbox = Outbox(state_dir / "outbox.sqlite3")
    source = FolderSource(config.watch_dir, config.done_path, config.failed_path, config.settle_s)
    stats = InferenceStats()
    link_box: list[Link] = []

    def publish_event(event: ModelEvent) -> None:
        if link_box:
            link_box[0].publish_event(event)

    def on_change() -> None:
        if link_box:
            link_box[0].publish_status()

    models = ModelManager(
        agent_id=config.agent_id,
        state_dir=state_dir,
        make_backend=make_backend,
        public_key_path=config.model_public_key,
        hub_token=config.hub.token.get_secret_value() if config.hub.token else None,
        precision=precision,
        publish_event=publish_event,
        on_change=on_change,
        http_timeout_s=config.hub.timeout_s,
    )
    agent = Agent(config, source, outbox, models, stats)
    if connect:
        link = Link(
            config.agent_id,
            config.mqtt,
            outbox,
            agent.status,
            models.submit,
            status_interval_s=config.status_interval_s,
        )
        link_box.append(link)
        agent.attach_link(link)
    return agent
