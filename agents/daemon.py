"""The agent process: :func:`build_agent` is its composition root, :meth:`Agent.run` its main loop.

Sources feed one :class:`agents.pipeline.Pipeline` (decode threads -> asynchronous inference ->
batched outbox commits): the watch folder (polled here, in :meth:`Agent.run`), and when enabled
the HTTP endpoint (:mod:`agents.sources.http`) and a camera (:mod:`agents.sources.camera`), each
on its own thread. The outbox pump (:mod:`agents.link`) publishes committed results over MQTT.
Without an active model, watch-folder files wait; while the outbox is at its cap or the disk is
low, every source waits (see :meth:`agents.pipeline.Pipeline.blocked_reason`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2

from agents.backends import Backend, BackendError, create_backend
from agents.config import AgentConfig
from agents.link import Link
from agents.models import ModelError, ModelManager
from agents.outbox import Outbox
from agents.pipeline import Job, Outcome, OutcomeKind, Pipeline
from agents.sources.camera import CameraSource
from agents.sources.folder import FolderSource
from agents.sources.http import HttpSource
from agents.vitals import InferenceStats, collect_vitals
from shared.logs import kv
from shared.loops import Loops
from shared.schemas import AgentState, AgentStatus, LoopState, ModelEvent

log = logging.getLogger(__name__)


class Agent:
    """One running agent. Build it with :func:`build_agent`; everything it uses is passed in."""

    def __init__(
        self,
        config: AgentConfig,
        source: FolderSource,
        outbox: Outbox,
        models: ModelManager,
        stats: InferenceStats,
        pipeline: Pipeline,
        http: HttpSource | None = None,
        camera: CameraSource | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.outbox = outbox
        self.models = models
        self.stats = stats
        self.pipeline = pipeline
        self.http = http
        self.camera = camera
        self.link: Link | None = None
        self._inflight: set[Path] = set()
        self._inflight_lock = threading.Lock()
        self._started = False

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
            precision=active.backend.precision if active else None,
            execution_precision=active.backend.execution_precision if active else None,
            vitals=vitals,
            loops={name: LoopState.model_validate(s) for name, s in self.pipeline.loops.snapshot().items()},
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Prepare folders, finish interrupted moves, restore or install the model, start threads."""
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
        self.pipeline.start()
        self._started = True
        self.models.start()
        if self.link is not None:
            self.link.start()
        if self.http is not None:
            self.http.start()
        if self.camera is not None:
            self.camera.start()

    def run(self, stop: threading.Event, on_ready: Callable[[], None] | None = None) -> None:
        """Start, call ``on_ready``, then feed the watch folder to the pipeline until ``stop`` is set."""
        self.start()
        log.info(
            kv(
                "agent_running",
                agent_id=self.config.agent_id,
                watch_dir=self.config.watch_dir,
                backend=self.config.backend,
                device=self.config.device,
                http=f"{self.http.host}:{self.http.port}" if self.http else "off",
                camera=self.config.camera.source if self.camera else "off",
            )
        )
        if on_ready is not None:
            on_ready()
        try:
            while not stop.is_set():
                self.feed_once(stop)
        finally:
            self.close()

    def feed_once(self, stop: threading.Event | None = None) -> int:
        """Queue ready watch-folder files (as many as the pipeline takes); wait when there is nothing to do.

        Returns how many files were queued.
        """
        wait = stop.wait if stop is not None else threading.Event().wait
        if self.models.active is None or self.pipeline.blocked_reason():
            wait(self.config.poll_interval_s)
            return 0
        room = self.pipeline.room()
        if room == 0:
            self.pipeline.wait_for_room(self.config.poll_interval_s)
            return 0
        with self._inflight_lock:
            ready = [p for p in self.source.poll() if p not in self._inflight]
        queued = 0
        for path in ready[: min(room, self.config.batch_size)]:
            with self._inflight_lock:
                self._inflight.add(path)
            job = Job(name=path.name, path=path, on_done=partial(self._file_done, path))
            if not self.pipeline.submit(job):
                self._file_done(path, Outcome(OutcomeKind.STOPPED))
                break
            queued += 1
        if queued == 0:
            wait(self.config.poll_interval_s)
        return queued

    def _file_done(self, path: Path, outcome: Outcome) -> None:
        with self._inflight_lock:
            self._inflight.discard(path)

    def close(self) -> None:
        """Stop the sources, drain the pipeline, say goodbye on MQTT, stop the model worker, close outbox."""
        if self.camera is not None:
            self.camera.stop()
        if self.http is not None:
            self.http.stop()
        if self._started:
            self.pipeline.close()
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def build_agent(config: AgentConfig, connect: bool = True) -> Agent:
    """Compose an agent from ``config``: source, outbox, backend factory, model manager, MQTT link.

    Nothing starts until :meth:`Agent.run` (or :meth:`Agent.start`); the HTTP port is bound by
    ``start``. ``connect=False`` builds an agent without MQTT (used by ``leukonet agent rollback``
    and offline tests).

    Raises:
        ValueError: unknown backend name.
        BackendError: the backend cannot run on this machine (e.g. unknown OpenVINO device).
    """
    state_dir = config.state_path
    state_dir.mkdir(parents=True, exist_ok=True)
    precision = config.effective_precision()
    # Fail at start-up, not at the first model: unknown backend names and devices.
    create_backend(config.backend, config.device, precision, config.performance_hint).close()
    # OpenCV's own worker threads would compete with the inference streams for the cores; the
    # pipeline parallelises across images with its decode threads instead.
    cv2.setNumThreads(1)

    def make_backend() -> Backend:
        return create_backend(
            config.backend,
            config.device,
            precision,
            config.performance_hint,
            infer_requests=config.pipeline.infer_requests,
        )

    outbox = Outbox(state_dir / "outbox.sqlite3")
    source = FolderSource(config.watch_dir, config.done_path, config.failed_path, config.settle_s)
    stats = InferenceStats()
    loops = Loops()
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
        download_attempts=config.hub.download_attempts,
        retry_backoff_s=config.hub.retry_backoff_s,
        loops=loops,
    )

    def notify() -> None:
        if link_box:
            link_box[0].notify_outbox()

    pipeline = Pipeline(
        agent_id=config.agent_id,
        lab=config.lab,
        low_confidence_threshold=config.low_confidence_threshold,
        models=models,
        outbox=outbox,
        folder=source,
        stats=stats,
        config=config.pipeline,
        limits=config.outbox,
        state_dir=state_dir,
        notify=notify,
        loops=loops,
    )
    http = HttpSource(config.http, pipeline, models, config.agent_id) if config.http.enabled else None
    camera = CameraSource(config.camera, pipeline, models) if config.camera.enabled else None
    agent = Agent(config, source, outbox, models, stats, pipeline, http=http, camera=camera)
    if connect:
        link = Link(
            config.agent_id,
            config.mqtt,
            outbox,
            agent.status,
            models.submit,
            status_interval_s=config.status_interval_s,
            loops=loops,
        )
        link_box.append(link)
        agent.attach_link(link)
    return agent
