"""The Flask application factory: the web process's composition root.

``create_app(config)`` builds the per-app services (database engine, bundle store + registry,
token table, MQTT publisher, rollout engine, training-job queue) and binds them ``init_app``
style; nothing happens at import time.
Callers that run the ingest worker in the same process pass its ``ingest_stats`` so the API and
``/healthz`` can show them. Call :func:`close_app` when done (tests, ``serve`` shutdown).
"""

from __future__ import annotations

from datetime import timedelta

from flask import Flask

from hub.api import bp as api_bp
from hub.api import docs_bp as api_docs_bp
from hub.auth import TokenAuth
from hub.config import HubConfig
from hub.db.session import Database
from hub.errors import register_error_handlers
from hub.extensions import Services, hub_ext
from hub.health import bp as health_bp
from hub.ingest.stats import IngestStats
from hub.mqtt.publisher import MqttPublisher
from hub.registry.service import ModelRegistry, load_trusted_keys
from hub.registry.store import FilesystemBundleStore
from hub.rollouts.engine import RolloutEngine
from hub.rollouts.store import model_users
from hub.training.service import TrainingJobs
from hub.web import bp as web_bp

MIB = 1024 * 1024


def create_app(
    config: HubConfig,
    *,
    database: Database | None = None,
    publisher: MqttPublisher | None = None,
    ingest_stats: IngestStats | None = None,
    rollouts: RolloutEngine | None = None,
) -> Flask:
    """Build a hub web app for ``config``.

    Args:
        config: validated hub config; ``secret_key`` is required.
        database: an existing :class:`Database` to share (the caller then disposes it); default a
            new engine on ``config.db_url`` owned by the app.
        publisher: the MQTT publisher for desired states; default a lazily connecting one.
        ingest_stats: counters of an in-process ingest worker, if any.
        rollouts: the rollout engine shared with an in-process ingest worker and ticker; default
            a new one on this app's database and publisher.

    Raises:
        ConfigError: no ``secret_key``, or a trusted key file cannot be loaded.
    """
    secret = config.require_secret_key()
    keys = load_trusted_keys(config.trusted_keys)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret,
        MAX_CONTENT_LENGTH=config.max_upload_mb * MIB,
        # werkzeug >= 3.1 also limits form-part memory; bundles stream to disk, so only the total counts
        MAX_FORM_MEMORY_SIZE=None,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.public_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the documented field order
    db = database or Database(config.db_url)
    store = FilesystemBundleStore(config.data_dir / "bundles")
    pub = publisher or MqttPublisher(config.mqtt)
    registry = ModelRegistry(
        db,
        store,
        keys,
        max_bytes=config.max_upload_mb * MIB,
        limits=config.bundle_limits(),
        usage_checks=[model_users],
    )
    services = Services(
        config=config,
        db=db,
        auth=TokenAuth(config.tokens),
        registry=registry,
        publisher=pub,
        rollouts=rollouts or RolloutEngine(db, pub, config.public_url, config.rollouts),
        training=TrainingJobs(db, registry, config.training),
        ingest_stats=ingest_stats,
        owns_db=database is None,
        owns_publisher=publisher is None,
    )
    hub_ext.init_app(app, services)
    register_error_handlers(app)

    app.register_blueprint(api_bp)
    app.register_blueprint(api_docs_bp)
    app.register_blueprint(web_bp)
    app.register_blueprint(health_bp)
    return app


def close_app(app: Flask) -> None:
    """Release what the app owns: its MQTT publisher connection and database engine."""
    services = hub_ext.for_app(app)
    if services.owns_publisher:
        services.publisher.close()
    if services.owns_db:
        services.db.dispose()
