"""The agent's Prometheus metrics: a collector read at scrape time and the port that serves it.

Off by default. With ``metrics.enabled: true`` the agent serves ``/metrics`` on ``metrics.host``
(default ``127.0.0.1``: only the lab PC itself can scrape) and ``metrics.port`` (default 9108) with
prometheus_client's own HTTP server, on a registry of its own. Binding another address is a choice
the operator makes: the port has no authentication, and it tells whoever reaches it the model, the
throughput and the outbox depth (no patient data).

:class:`AgentCollector` reads what the agent already keeps: the pipeline's outcome counts, its
fields / cells / unfamiliar counts and inference histogram (:class:`agents.pipeline.Pipeline`), the
inference stats' totals and errors (:class:`agents.vitals.InferenceStats`), the outbox depth, the
active model, the MQTT link and the loop registry. :class:`MetricsServer` runs the HTTP server on a
daemon thread that the loop registry watches (``metrics-http``), so a dead server shows in the
agent's status and never stops the agent; a port that cannot be bound is logged and reported the
same way.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import cast
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agents.config import MetricsConfig
from agents.jobs import OutcomeKind
from agents.link import Link
from agents.models import ModelManager
from agents.outbox import Outbox
from agents.pipeline import Pipeline
from agents.vitals import InferenceStats
from shared.logs import kv
from shared.loops import Loops

log = logging.getLogger(__name__)

#: the loop name the server's thread has in the agent's status
LOOP = "metrics-http"
#: outcomes that are not a classification: counted in ``leukonet_agent_images_failed_total{reason}``
FAILED = tuple(k for k in OutcomeKind if k not in (OutcomeKind.CLASSIFIED, OutcomeKind.ALREADY_DONE))


class AgentCollector(Collector):
    """Reads the agent's counters at every scrape (see docs/operations.md for the list).

    Args:
        agent_id, lab: labels of ``leukonet_agent_info``.
        state_dir: its disk's free space is reported.
        outbox_capacity: ``outbox.max_rows``.
        link: the MQTT link; None for an agent without MQTT (connected reads 0).
    """

    def __init__(
        self,
        agent_id: str,
        lab: str,
        state_dir: Path,
        pipeline: Pipeline,
        stats: InferenceStats,
        outbox: Outbox,
        outbox_capacity: int,
        models: ModelManager,
        loops: Loops,
        link: Link | None,
    ) -> None:
        self.agent_id, self.lab, self.state_dir = agent_id, lab, state_dir
        self.pipeline, self.stats, self.outbox, self.models = pipeline, stats, outbox, models
        self.outbox_capacity = outbox_capacity
        self.loops = loops
        self.link = link

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to read before the agent runs

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "leukonet_agent_info", "The agent's id and lab (always 1)", labels=["agent_id", "lab"]
        )
        info.add_metric([self.agent_id, self.lab], 1)
        yield info
        yield from self._images()
        yield from self.pipeline.inference_seconds.collect()
        yield GaugeMetricFamily(
            "leukonet_agent_outbox_depth",
            "Results waiting for the broker's PUBACK",
            value=self.outbox.depth(),
        )
        yield GaugeMetricFamily(
            "leukonet_agent_outbox_capacity_rows",
            "outbox.max_rows: intake pauses when the depth reaches it",
            value=self.outbox_capacity,
        )
        yield GaugeMetricFamily(
            "leukonet_agent_disk_free_bytes",
            "Free space on the state_dir disk",
            value=shutil.disk_usage(self.state_dir).free,
        )
        queue = self.outbox.evidence_queue
        if queue is not None:
            rows, size = queue.depth()
            yield GaugeMetricFamily(
                "leukonet_agent_evidence_queue_rows", "Evidence images waiting for upload", value=rows
            )
            yield GaugeMetricFamily(
                "leukonet_agent_evidence_queue_bytes", "Bytes of evidence waiting for upload", value=size
            )
            yield CounterMetricFamily(
                "leukonet_agent_evidence_dropped",
                "Evidence images dropped at the queue's cap (results are never dropped)",
                value=queue.dropped,
            )
        yield from self._model()
        connected = self.link is not None and self.link.connected
        yield GaugeMetricFamily(
            "leukonet_agent_mqtt_connected", "1 while connected to the broker", value=int(connected)
        )
        yield from self._loops()

    def _images(self) -> Iterator[Metric]:
        outcomes = self.pipeline.outcomes()
        yield CounterMetricFamily(
            "leukonet_agent_images_classified",
            "Images classified and committed to the outbox",
            value=self.stats.total,
        )
        failed = CounterMetricFamily(
            "leukonet_agent_images_failed",
            "Images not classified, by reason: bad_image (not decodable), no_model, unavailable "
            "(inference or outbox failed), gone, stopped; watch-folder files but bad_image ones are retried",
            labels=["reason"],
        )
        for kind in FAILED:
            failed.add_metric([kind.value], outcomes.get(kind, 0))
        yield failed
        errors = CounterMetricFamily(
            "leukonet_agent_errors", "Errors a loop survived, by reason", labels=["reason"]
        )
        for reason, n in sorted(dict(self.stats.errors).items()):  # dict(): one step under the GIL
            errors.add_metric([reason], n)
        yield errors
        yield from self._analysis()

    def _analysis(self) -> Iterator[Metric]:
        counts = self.pipeline.analysis()
        yield CounterMetricFamily(
            "leukonet_agent_fields",
            "Smear fields classified cell by cell and committed to the outbox",
            value=counts["fields"],
        )
        yield CounterMetricFamily(
            "leukonet_agent_cells_classified",
            "White cells classified in those fields (at most the finder's max_cells per field)",
            value=counts["cells"],
        )
        yield CounterMetricFamily(
            "leukonet_agent_unfamiliar_results",
            "Results flagged unfamiliar (out of distribution): images, and fields with enough such cells",
            value=counts["unfamiliar"],
        )

    def _model(self) -> Iterator[Metric]:
        active = self.models.active
        if active is None:
            return  # no model yet: the info series is absent
        model = GaugeMetricFamily(
            "leukonet_agent_model_info",
            "The active model (always 1; absent before the first model)",
            labels=["model", "version", "device", "precision", "execution_precision"],
        )
        backend = active.backend
        labels = [
            active.name,
            active.version,
            backend.device,
            backend.precision or "",
            backend.execution_precision or "",
        ]
        model.add_metric(labels, 1)
        yield model

    def _loops(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("leukonet_agent_loop_up", "1 while the loop runs", labels=["loop"])
        restarts = CounterMetricFamily(
            "leukonet_agent_loop_restarts", "Times the loop died and was restarted", labels=["loop"]
        )
        for name, state in sorted(self.loops.snapshot().items()):
            up.add_metric([name], int(bool(state["alive"])))
            restarts.add_metric([name], cast(int, state["restarts"]))
        yield up
        yield restarts


class MetricsServer:
    """prometheus_client's HTTP server on ``config.host:config.port`` for a registry of its own
    (never the client's global one) holding ``collector``.

    :meth:`start` binds the port and serves on a daemon thread the ``loops`` registry watches;
    :meth:`stop` shuts it down. Neither raises: a port that cannot be bound is logged as an error
    and the loop shows as not running.
    """

    def __init__(self, config: MetricsConfig, collector: Collector, loops: Loops) -> None:
        self.config = config
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.loops = loops
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        """The bound port (``metrics.port: 0`` picks a free one); None when not serving."""
        return None if self._httpd is None else self._httpd.server_port

    def start(self) -> None:
        host, port = self.config.host, self.config.port
        try:
            self._httpd, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.error(
                kv(
                    "metrics_port_failed",
                    address=f"{host}:{port}",
                    error=exc,
                    fix="free the port or set metrics.port (metrics.enabled: false turns it off)",
                )
            )
            self.loops.watch(LOOP, lambda: False)
            return
        thread = self._thread
        self.loops.watch(LOOP, thread.is_alive)
        log.info(kv("metrics_serving", url=f"http://{host}:{self.port}/metrics"))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the port; the loop leaves the status. Idempotent."""
        httpd, thread, self._httpd, self._thread = self._httpd, self._thread, None, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout)
        self.loops.forget(LOOP)
