"""``GET /metrics``: the hub in the Prometheus text format, for readers (a ``viewer`` service token).

Each app gets a :class:`~prometheus_client.CollectorRegistry` of its own (built when the blueprint
is registered; nothing module-level), holding one :class:`HubCollector` that reads everything at
scrape time: the ingest worker's counters and histograms (:class:`hub.ingest.stats.IngestStats`),
rollouts, rollout targets, training jobs and agents counted by state in the database (one
``GROUP BY`` query each), and the unexpected request errors by route (:func:`hub.errors.request_errors`).

In a process without an ingest worker (``services.ingest_stats is None``: the web app under
gunicorn, while ``leukonet hub ingest`` workers do the ingest) every ``leukonet_ingest_*`` family is
absent: no series means "not measured here", never "nothing ingested". docs/operations.md lists the
metrics and the PromQL for rates and quantiles.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime

from flask import Blueprint, Flask, Response, current_app, request
from flask.blueprints import BlueprintSetupState
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import InstrumentedAttribute, Session

from hub.auth import require_roles
from hub.db.models import Agent, Rollout, RolloutTarget, TrainingJob
from hub.errors import request_errors
from hub.extensions import hub_ext
from hub.ingest.stats import IngestStats
from hub.roles import READERS
from hub.rollouts.spec import RolloutState, TargetState
from hub.services import Services
from shared.logs import kv
from shared.schemas import AgentState
from shared.training import JOB_STATES

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)
REGISTRY_KEY = "leukonet.metrics"

#: ingest counters exported as ``leukonet_ingest_<name>_total``: IngestStats.snapshot() key -> help
INGEST_COUNTERS = {
    "received": "MQTT messages the ingest worker received",
    "stored": "Classification results stored (duplicates not included)",
    "duplicates": "Results dropped as duplicates of a stored result id (QoS 1 redelivery)",
    "statuses": "Agent status messages applied",
    "events": "Model events stored",
    "batches": "Batches committed to the database",
    "db_errors": "Failed database writes: an outage (retried, not acknowledged) or a refused batch",
    "reconcile_errors": "Rollout reconciliations that failed after a commit",
}
#: states always exported (0 when none), so a dashboard shows a line rather than a gap
AGENT_STATES = ("unknown", *(s.value for s in AgentState))


class HubCollector(Collector):
    """Reads the hub's state at every scrape; see the module docstring for what is absent when.

    Args:
        services: the app's services (database, ingest stats).
        errors: the app's unexpected-error counter, ``"METHOD /route" -> n``.
    """

    def __init__(self, services: Services, errors: Counter[str]) -> None:
        self._services = services
        self._errors = errors

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not query the database

    def collect(self) -> Iterator[Metric]:
        if self._services.ingest_stats is not None:
            yield from ingest_metrics(self._services.ingest_stats)
        yield from self._database_metrics()
        errors = CounterMetricFamily(
            "leukonet_request_errors",
            "Requests answered 500 by an unexpected error, by method and route",
            labels=["method", "route"],
        )
        for key, n in sorted(dict(self._errors).items()):
            method, _, route = key.partition(" ")
            errors.add_metric([method, route], n)
        yield errors

    def _database_metrics(self) -> Iterator[Metric]:
        families = [
            ("leukonet_rollouts", "Rollouts by state", Rollout.state, [s.value for s in RolloutState]),
            (
                "leukonet_rollout_targets",
                "Agents in rollouts (every rollout, finished ones too) by target state",
                RolloutTarget.state,
                [s.value for s in TargetState],
            ),
            ("leukonet_training_jobs", "Training jobs by state", TrainingJob.state, list(JOB_STATES)),
            ("leukonet_agents", "Registered agents by last reported state", Agent.state, list(AGENT_STATES)),
        ]
        up = GaugeMetricFamily("leukonet_database_up", "1 when the database answered this scrape's queries")
        try:
            with self._services.db.session() as session:
                counts = [count_by(session, column) for _, _, column, _ in families]
        except SQLAlchemyError as exc:
            log.warning(kv("metrics_db_failed", error=str(exc)[:200]))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for (name, doc, _, known), by_state in zip(families, counts, strict=True):
            gauge = GaugeMetricFamily(name, doc, labels=["state"])
            for state in sorted(set(known) | set(by_state)):
                gauge.add_metric([state], by_state.get(state, 0))
            yield gauge


def count_by(session: Session, column: InstrumentedAttribute[str]) -> dict[str, int]:
    """``{value: rows}`` of ``column``'s table, in one ``GROUP BY`` query."""
    rows = session.execute(select(column, func.count()).group_by(column)).all()
    return {str(value): int(n) for value, n in rows}


def ingest_metrics(stats: IngestStats) -> Iterator[Metric]:
    """The ``leukonet_ingest_*`` families of one ingest worker, from a consistent snapshot."""
    snap = stats.snapshot()
    for key, doc in INGEST_COUNTERS.items():
        yield CounterMetricFamily(f"leukonet_ingest_{key}", doc, value=snap[key])
    refused = CounterMetricFamily(
        "leukonet_ingest_refused",
        "Messages refused (acknowledged, not stored) by reason: too_large, bad_json, schema, "
        "bad_topic, unknown_agent, revoked_agent, agent_mismatch, labels_mismatch, ...",
        labels=["reason"],
    )
    for reason, n in sorted(snap["invalid"].items()):
        refused.add_metric([reason], n)
    yield refused
    yield GaugeMetricFamily(
        "leukonet_ingest_running", "1 while the ingest worker runs", value=int(snap["running"])
    )
    yield GaugeMetricFamily(
        "leukonet_ingest_connected",
        "1 while the ingest worker is connected to the broker",
        value=int(snap["connected"]),
    )
    if snap["last_commit_at"] is not None:
        yield GaugeMetricFamily(
            "leukonet_ingest_last_commit_timestamp_seconds",
            "Unix time of the last committed batch (absent before the first)",
            value=datetime.fromisoformat(snap["last_commit_at"]).timestamp(),
        )
    up = GaugeMetricFamily("leukonet_ingest_loop_up", "1 while the ingest loop runs", labels=["loop"])
    restarts = CounterMetricFamily(
        "leukonet_ingest_loop_restarts", "Times the loop died and was restarted", labels=["loop"]
    )
    for loop, state in sorted(snap["loops"].items()):
        up.add_metric([loop], int(bool(state["alive"])))
        restarts.add_metric([loop], state["restarts"])
    yield up
    yield restarts
    for histogram in (stats.batch_seconds, stats.commit_seconds, stats.lag_seconds):
        yield from histogram.collect()


def _build_registry(state: BlueprintSetupState) -> None:
    """Once per app, when the blueprint is registered (after ``hub_ext.init_app``)."""
    app = state.app
    assert isinstance(app, Flask)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub_ext.for_app(app), request_errors(app)))
    app.extensions[REGISTRY_KEY] = registry


bp.record_once(_build_registry)


@bp.get("/metrics")
@require_roles(*READERS)
def metrics() -> Response:
    """The hub's metrics in the Prometheus text format (``Authorization: Bearer`` of a reader)."""
    registry: CollectorRegistry = current_app.extensions[REGISTRY_KEY]
    # the format the scraper asks for (text 0.0.4 / 1.0.0, OpenMetrics), as the client's own server does
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(registry), content_type=content_type)
