"""``leukonet hub serve``: the one-process composition root.

Order on start: start the embedded broker (if configured; the hub then logs in to it with the
account the broker made for it), migrate the database, create the first admin (``admin_password``)
when there is no user yet, start the ingest worker thread (which feeds agents' model reports to
the rollout engine), the rollout tick thread (timeouts, retries), the retention thread when
``retention.results_days`` is set (:mod:`hub.retention`: its failures are logged and counted, never
fatal), then serve the web app (werkzeug ``make_server``, threaded). SIGINT and SIGTERM stop them
in reverse order. For production run the web app under gunicorn (``gunicorn 'hub.wsgi:app'`` with
``LEUKONET_HUB_CONFIG``) and ``leukonet hub ingest`` workers.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from flask import Flask
from pydantic import SecretStr
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from hub.app import create_app
from hub.broker.embedded import EmbeddedBroker, start_embedded_broker
from hub.config import HubConfig
from hub.db.migrate import upgrade
from hub.identity.users import ensure_first_admin
from hub.ingest.runtime import tune_gc
from hub.ingest.stats import IngestStats
from hub.ingest.worker import IngestWorker
from hub.retention import Retention, RetentionTicker
from hub.rollouts.ticker import RolloutTicker
from hub.services import Services, build_services
from shared.clock import utcnow
from shared.logs import kv

log = logging.getLogger(__name__)


def install_stop_handlers(stop: threading.Event) -> None:
    """Set ``stop`` on SIGINT / SIGTERM (main thread only)."""

    def _handler(signum: int, _frame: FrameType | None) -> None:
        log.info(kv("signal", name=signal.Signals(signum).name, action="shutting down"))
        stop.set()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


SERVER_NAME = "leukonet"


def make_web_server(host: str, port: int, app: Flask, timeout_s: float) -> BaseWSGIServer:
    """werkzeug's threaded server with a socket timeout per connection and a versionless ``Server``.

    A client that sends its headers or body slower than one read per ``timeout_s`` (slowloris) is
    disconnected instead of holding a thread forever. For more than a lab's worth of clients, run the
    web app under gunicorn with ``--timeout`` (see the README). Responses say ``Server: leukonet``
    instead of werkzeug's and Python's versions, which would tell a scanner which advisories to try.
    """

    class HubRequestHandler(WSGIRequestHandler):
        timeout = timeout_s  # socketserver applies it to every read and write on the connection
        server_version = SERVER_NAME  # werkzeug's is "Werkzeug/x.y" (also the WSGI SERVER_SOFTWARE)

        def version_string(self) -> str:
            # http.server's appends sys_version, "Python/3.z"; the header is the name alone
            return SERVER_NAME

    return make_server(host, port, app, threaded=True, request_handler=HubRequestHandler)


def with_embedded_broker(config: HubConfig, broker: EmbeddedBroker) -> HubConfig:
    """``config`` pointed at the embedded broker: its loopback port, the hub's own login there, and
    enrollment through its dynamic security when it enforces identities (mosquitto)."""
    mqtt = config.mqtt.model_copy(
        update={
            "host": "127.0.0.1",
            "port": broker.port,
            "username": broker.hub_username,
            "password": SecretStr(broker.hub_password) if broker.hub_password else None,
            "tls": False,
            "ca_file": None,
            "cert_file": None,
            "key_file": None,
        }
    )
    enrollment = config.enrollment.model_copy(update={"dynamic_security": broker.enforces_identity})
    return config.model_copy(update={"mqtt": mqtt, "enrollment": enrollment})


def serve(config: HubConfig, stop: threading.Event | None = None) -> None:
    """Run broker (optional) + ingest + web until ``stop`` is set or a signal arrives."""
    config.require_secret_key()
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        install_stop_handlers(stop)
    broker: EmbeddedBroker | None = None
    if config.broker.embedded:
        broker = start_embedded_broker(config.broker, config.data_dir / "broker")
        config = with_embedded_broker(config, broker)
    services: Services | None = None
    worker: IngestWorker | None = None
    ticker: RolloutTicker | None = None
    retention: RetentionTicker | None = None
    try:
        services = build_services(config, ingest_stats=IngestStats())
        tune_gc()  # start-up objects out of the collector's sight: less GC work per ingested message
        upgrade(services.db)
        with services.db.session() as s:
            created = ensure_first_admin(s, config, utcnow())
            s.commit()
        if created:
            log.info(kv("first_admin_created", username=created))
        worker = IngestWorker(
            config, services.db, services.ingest_stats, on_commit=services.rollouts.on_ingest
        )
        worker.start()
        ticker = RolloutTicker(services.rollouts, config.rollouts.tick_s)
        ticker.start()
        if config.retention.results_days is not None or config.retention.evidence_days is not None:
            policy = Retention(services.db, config.retention, evidence_store=services.evidence)
            retention = RetentionTicker(policy, config.retention.interval_s)
            retention.start()
        app = create_app(config, services)
        server = make_web_server(config.host, config.port, app, config.web_timeout_s)
        thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
        thread.start()
        log.info(
            kv(
                "hub_ready",
                dashboard=f"http://{config.host}:{server.server_port}/",
                public_url=config.public_url,
                broker=broker.name if broker else "external",
                mqtt=f"{config.mqtt.host}:{config.mqtt.port}",
            )
        )
        while not stop.wait(0.5):
            if not thread.is_alive():
                raise RuntimeError("the web server thread stopped unexpectedly; see the log above")
            if not ticker.is_alive():
                raise RuntimeError("the rollout tick thread stopped unexpectedly; see the log above")
        server.shutdown()
        thread.join(10)
    finally:
        if retention is not None:
            retention.stop()
        if ticker is not None:
            ticker.stop()
        if worker is not None:
            worker.stop()
        if services is not None:
            services.close()
        if broker is not None:
            broker.stop()
        log.info(kv("hub_stopped"))
