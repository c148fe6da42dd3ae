"""API errors: one exception family (:class:`HubError`) and one :func:`error_response` for every JSON error.

Every API error body is ``{"error": {"code": "...", "message": "..."}}`` with a 4xx/5xx status.
"""

from __future__ import annotations

import logging
from collections import Counter

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from shared.logs import kv

log = logging.getLogger(__name__)


class HubError(Exception):
    """A request the hub refuses: ``status``, ``code`` and ``message`` become the JSON error response.

    The services (registry, rollouts, training jobs) raise their subclasses; routes let them
    propagate and :func:`register_error_handlers` answers them, so no route converts errors.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ApiError(HubError):
    """An error a client caused (or a dependency outage), raised by a route itself."""


def error_response(status: int, code: str, message: str) -> Response:
    """The JSON error body every API route returns."""
    resp = jsonify({"error": {"code": code, "message": message}})
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="leukonet"'
    return resp


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def request_errors(app: Flask) -> Counter[str]:
    """Unexpected errors answered 500, counted by ``METHOD /route`` (shown by ``/healthz``)."""
    counter: Counter[str] = app.extensions.setdefault("leukonet.request_errors", Counter())
    return counter


def register_error_handlers(app: Flask) -> None:
    """JSON errors for the API (and for 413 everywhere); HTML pages keep Flask's defaults."""

    @app.errorhandler(HubError)
    def _hub_error(exc: HubError) -> Response:
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response | HTTPException:
        status = exc.code or 500
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            return error_response(
                413,
                "payload_too_large",
                f"request body is larger than the hub's limit of {limit} bytes; raise "
                "max_upload_mb in the hub config if this bundle is genuine",
            )
        if not _wants_json():
            return exc
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(status, code, exc.description or exc.name or "error")

    errors = request_errors(app)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        rule = request.url_rule.rule if request.url_rule is not None else "<no route>"
        errors[f"{request.method} {rule}"] += 1
        log.exception(kv("unhandled_error", path=request.path[:200], method=request.method))
        return error_response(500, "internal_error", "the hub hit an unexpected error; see its log")
