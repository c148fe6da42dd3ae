"""The Flask application factory: the web process's composition root.

``create_app(config)`` binds the process's services (:func:`hub.services.build_services`: database
engine, bundle store + registry, token table, MQTT publisher, rollout engine, training-job queue)
``init_app`` style, and the dashboard (:func:`hub.web.init_app`: its blueprints and Flask-Login);
nothing happens at import time. ``serve`` builds the services itself, runs the
ingest worker and ticker on them and passes them in. Call :func:`close_app` when done. Every response
carries :data:`SECURITY_HEADERS`.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Flask, Response

from hub.api import bp as api_bp
from hub.api import docs_bp as api_docs_bp
from hub.config import HubConfig
from hub.errors import register_error_handlers
from hub.extensions import hub_ext
from hub.health import bp as health_bp
from hub.metrics import bp as metrics_bp
from hub.services import MIB, Services, build_services
from hub.web import init_app as init_web

# Scripts and styles come only from hub/static (the templates have no inline <script>, style= or
# on*= handlers, and must not get any); nothing may frame the hub, post its forms elsewhere or be
# sniffed into another content type; links to other sites do not learn the hub's URLs.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _add_security_headers(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def secure_cookies(config: HubConfig) -> bool:
    """Whether cookies get the ``Secure`` flag: ``login.secure_cookies``, by default when
    ``public_url`` is https (TLS in front of the hub)."""
    if config.login.secure_cookies is not None:
        return config.login.secure_cookies
    return config.public_url.startswith("https://")


def create_app(config: HubConfig, services: Services | None = None) -> Flask:
    """Build a hub web app for ``config``.

    Args:
        config: validated hub config; ``secret_key`` is required.
        services: the process's object graph (:func:`hub.services.build_services`) when the
            caller runs more than the web app on it (``serve``); default a new one for this app.
            Either way :func:`close_app` closes it.

    Raises:
        ConfigError: no ``secret_key``, or a trusted key file cannot be loaded.
    """
    secret = config.require_secret_key()
    services = services or build_services(config)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret,
        MAX_CONTENT_LENGTH=config.max_upload_mb * MIB,
        # werkzeug >= 3.1 also limits form-part memory; bundles stream to disk, so only the total counts
        MAX_FORM_MEMORY_SIZE=None,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies(config),
        # Flask-Login's remember cookie is never set (no "remember me"); flagged all the same
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=secure_cookies(config),
        # the cookie may live as long as the session row does (login.session_hours after login)
        PERMANENT_SESSION_LIFETIME=timedelta(hours=config.login.session_hours),
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the documented field order
    hub_ext.init_app(app, services)
    register_error_handlers(app)
    app.after_request(_add_security_headers)  # error pages and static files too

    app.register_blueprint(api_bp)
    app.register_blueprint(api_docs_bp)
    init_web(app)
    app.register_blueprint(health_bp)
    app.register_blueprint(metrics_bp)  # builds the app's own metrics registry
    return app


def close_app(app: Flask) -> None:
    """Close the app's services (:meth:`hub.services.Services.close`): publisher and database."""
    hub_ext.for_app(app).close()
