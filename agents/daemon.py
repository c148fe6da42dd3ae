"""The agent process: :func:`build_agent` is its composition root, :meth:`Agent.run` its main loop.

:func:`build_agent` builds every part once, in dependency order, and passes each what it needs:
the outbox, the model manager and the pipeline (which report to the hub through an
:class:`agents.uplink.Uplink`), the image sources the config enables (from the registry
:data:`agents.sources.SOURCES`: the watch folder always, the HTTP endpoint and a camera when their
sections say ``enabled``), the status report, and last the MQTT link, which attaches to the uplink.
The agent's credentials come from one :class:`agents.credentials.CredentialSource` (its
``credentials.json``, else the config's bootstrap login and token): the link asks it for the broker
login before every (re)connect, bundle downloads for the API token before every try.

Every source feeds one :class:`agents.pipeline.Pipeline` (decode threads -> asynchronous inference
-> batched outbox commits) on its own thread; the outbox pump (:mod:`agents.link`) publishes
committed results over MQTT. Without an active model, watch-folder files wait; while the outbox is
at its cap or the disk is low, every source waits (see :meth:`agents.pipeline.Pipeline.blocked_reason`).
A source whose input is gone for good (the watch folder cannot be read) stops the agent with that
error (:class:`agents.sources.Halt`). With ``metrics.enabled`` the agent also serves Prometheus
metrics (:mod:`agents.metrics`) from start to close. Unless ``evidence.mode`` is ``none``, the
evidence uploader (:mod:`agents.evidence`) sends the evidence images committed with results to the
hub with the agent's current API token; with ``none``, evidence still queued from an earlier mode
is deleted at start, unsent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import cv2

from agents.backends import Backend, BackendError, create_backend
from agents.config import AgentConfig
from agents.credentials import CredentialSource
from agents.evidence import EvidenceMaker, EvidenceQueue, EvidenceUploader
from agents.link import Link
from agents.metrics import AgentCollector, MetricsServer
from agents.models import ModelError, ModelManager
from agents.outbox import Outbox
from agents.pipeline import Pipeline
from agents.sources import Halt, Source, SourceContext, build_sources
from agents.specimen import SpecimenRule
from agents.status import StatusReport
from agents.uplink import Uplink
from agents.vitals import InferenceStats
from shared.logs import kv
from shared.loops import Loops
from shared.schemas import AgentState, AgentStatus

log = logging.getLogger(__name__)


class Agent:
    """One running agent. Build it with :func:`build_agent`; everything it uses is passed in.

    Args:
        sources: the enabled image sources by type, started in this order and stopped in reverse.
        status: computes the agent's status (published by ``link``).
        halt: where a source reports an error that must stop the agent.
        link: the MQTT link; None for an agent without MQTT.
        metrics: the Prometheus metrics port; None when ``metrics.enabled`` is false.
        evidence: uploads evidence images to the hub; None without MQTT or with ``evidence.mode: none``.
    """

    def __init__(
        self,
        config: AgentConfig,
        outbox: Outbox,
        models: ModelManager,
        pipeline: Pipeline,
        sources: dict[str, Source],
        status: StatusReport,
        halt: Halt,
        link: Link | None = None,
        metrics: MetricsServer | None = None,
        evidence: EvidenceUploader | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.models = models
        self.pipeline = pipeline
        self.sources = sources
        self.link = link
        self.metrics = metrics
        self.evidence = evidence
        self._status = status
        self._halt = halt
        self._started = False

    def status(self, state: AgentState = AgentState.ONLINE) -> AgentStatus:
        """The agent's status now: active model (None = no model yet), device, vitals and loops."""
        return self._status(state)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Restore or install the model, start the pipeline, the model worker, the link, the evidence
        uploader, the metrics port, the sources."""
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
        if self.evidence is not None:
            self.evidence.start()
        if self.metrics is not None:
            self.metrics.start()
        for source in self.sources.values():
            source.start()

    def run(self, stop: threading.Event, on_ready: Callable[[], None] | None = None) -> None:
        """Start, call ``on_ready``, then run until ``stop`` is set.

        Raises:
            Exception: the error a source stopped the agent with (e.g. the watch folder vanished).
        """
        self.start()
        log.info(
            kv(
                "agent_running",
                agent_id=self.config.agent_id,
                watch_dir=self.config.watch_dir,
                backend=self.config.backend,
                device=self.config.device,
                sources=",".join(self.sources),
            )
        )
        if on_ready is not None:
            on_ready()
        try:
            self._halt.wait(stop)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the sources, drain the pipeline, say goodbye on MQTT, stop the evidence uploader (what
        it has not sent waits in the outbox), close the metrics port, stop the model worker, close the
        outbox."""
        for source in reversed(self.sources.values()):
            source.stop()
        if self._started:
            self.pipeline.close()
        if self.link is not None:
            self.link.stop()
        if self.evidence is not None:
            self.evidence.stop()
        if self.metrics is not None:
            self.metrics.stop()
        self.models.close()
        self.outbox.close()
        log.info(kv("agent_stopped", agent_id=self.config.agent_id))


def build_agent(config: AgentConfig, connect: bool = True) -> Agent:
    """Compose an agent from ``config``: outbox, model manager, pipeline, sources, status, MQTT link,
    evidence uploader and (``metrics.enabled``) the metrics port.

    Nothing starts until :meth:`Agent.run` (or :meth:`Agent.start`); the HTTP and metrics ports are
    bound by ``start``. ``connect=False`` builds an agent without MQTT (used by
    ``leukonet agent rollback`` and offline tests).

    Raises:
        ValueError: unknown backend name.
        BackendError: the backend cannot run on this machine (e.g. unknown OpenVINO device).
        agents.credentials.CredentialsError: (``connect=True``) ``credentials.json`` exists but is
            refused: open to others, corrupt, or for another agent or hub (the message says which).
    """
    state_dir = config.state_path
    state_dir.mkdir(parents=True, exist_ok=True)
    credentials = CredentialSource.from_config(config)
    if connect:
        credentials.load()  # a refused credentials file stops start-up, naming the file and the fix
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

    loops = Loops()
    stats = InferenceStats()
    queue = EvidenceQueue(state_dir / "evidence.sqlite3", max_bytes=config.evidence.queue_max_bytes)
    outbox = Outbox(state_dir / "outbox.sqlite3", evidence_queue=queue)
    if config.evidence.mode == "none":
        rows, size = queue.clear()
        if rows:
            log.warning(
                kv("evidence_discarded", rows=rows, bytes=size, reason="evidence.mode is none: never sent")
            )
    evidence = None
    if connect and config.evidence.mode != "none":
        evidence = EvidenceUploader(queue, config.hub.url, credentials.api_token, config.evidence, loops)
    # The link needs the model manager and the status, which reads it; the manager and the pipeline
    # therefore report to the uplink, and the link attaches to it once built (below).
    uplink = Uplink()
    models = ModelManager(
        agent_id=config.agent_id,
        state_dir=state_dir,
        make_backend=make_backend,
        public_key_path=config.model_public_key,
        hub_token=credentials.api_token,
        hub_url=config.hub.url,
        precision=precision,
        publish_event=uplink.publish_event,
        on_change=uplink.publish_status,
        http_timeout_s=config.hub.timeout_s,
        download_attempts=config.hub.download_attempts,
        retry_backoff_s=config.hub.retry_backoff_s,
        loops=loops,
    )
    pipeline = Pipeline(
        agent_id=config.agent_id,
        lab=config.lab,
        low_confidence_threshold=config.low_confidence_threshold,
        models=models,
        outbox=outbox,
        stats=stats,
        config=config.pipeline,
        limits=config.outbox,
        state_dir=state_dir,
        notify=uplink.notify_outbox if evidence is None else _both(uplink.notify_outbox, evidence.wake),
        loops=loops,
        evidence=EvidenceMaker(config.evidence) if config.evidence.mode != "none" else None,
        specimens=SpecimenRule(config.specimen.pattern, config.watch_dir),
    )
    halt = Halt()
    sources = build_sources(SourceContext(config, pipeline, models, outbox, halt))
    status = StatusReport(config, models, outbox, stats, loops)
    link = None
    if connect:
        link = Link(
            config.agent_id,
            config.mqtt,
            outbox,
            status,
            models.submit,
            status_interval_s=config.status_interval_s,
            loops=loops,
            mqtt_login=credentials.mqtt_login,
            drain_rate_per_s=config.outbox.drain_rate_per_s,
            backlog_rows=config.outbox.backlog_rows,
        )
        uplink.attach(link)
    metrics = None
    if config.metrics.enabled:
        collector = AgentCollector(
            config.agent_id,
            config.lab,
            state_dir,
            pipeline,
            stats,
            outbox,
            config.outbox.max_rows,
            models,
            loops,
            link,
        )
        metrics = MetricsServer(config.metrics, collector, loops)
    return Agent(config, outbox, models, pipeline, sources, status, halt, link, metrics, evidence)


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    """One callback calling ``first`` then ``second`` (the pipeline's single ``notify`` hook)."""

    def call() -> None:
        first()
        second()

    return call
