"""The HTTP source: classify images posted by LIS middleware, scripts or the seed project's clients.

Endpoints (stdlib ``ThreadingHTTPServer``; bound to ``http.host``, 127.0.0.1 by default):

``POST /classify``
    The image as the raw request body (any ``Content-Type``; name it with ``?name=scan1.jpg`` or
    an ``X-Image-Name`` header) or as ``multipart/form-data`` with a file field ``image`` (or
    ``file``, or the first part with a filename). ``200`` answers the
    :class:`shared.schemas.ClassificationResult` JSON; the result is also committed to the outbox
    and reported to the hub like any other.
``POST /Inference``
    The seed project's shape, for old clients: raw image bytes in, ``{"Response": "OK",
    "Message": "<label> (confidence 0.973)", "Results": {"label", "confidence", "low_confidence",
    "probabilities", "result_id", "model_name", "model_version"}}`` out; on an error
    ``{"Response": "FAILED", "Message": "<reason>", "Results": null}`` with the same status codes.
``GET /healthz``
    ``{"status": "ok", "agent_id", "model": {"name", "version", "device"} | null, "outbox_depth",
    "intake": "open" | "<reason it is paused>"}`` (no token needed).

Errors are JSON ``{"error": {"code": "...", "message": "..."}}``: 400 (empty body, no image part,
bad Content-Length), 401 (``http.token`` set and the ``Authorization: Bearer`` header is missing or
wrong), 404, 411 (no Content-Length), 413 (body above ``http.max_upload_mb``; not read), 422 (not a
decodable image, with the reason), 503 (no model yet, outbox at its cap, disk low, agent stopping;
with ``Retry-After``), 504 (no result within ``http.result_timeout_s``).

Each request thread waits for its job's ``on_done`` hook and answers with the outcome; uploads are
never stored.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import threading
import uuid
from email.message import Message
from email.parser import BytesHeaderParser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import parse_qs, urlsplit

from agents.config import HttpConfig
from agents.jobs import Job, Outcome, OutcomeKind
from agents.models import ModelManager
from agents.pipeline import Pipeline
from agents.sources.base import SourceContext
from shared.logs import kv

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_STATUS_FOR_OUTCOME = {
    OutcomeKind.BAD_IMAGE: (HTTPStatus.UNPROCESSABLE_ENTITY, "bad_image"),
    OutcomeKind.NO_MODEL: (HTTPStatus.SERVICE_UNAVAILABLE, "no_model"),
    OutcomeKind.UNAVAILABLE: (HTTPStatus.SERVICE_UNAVAILABLE, "unavailable"),
    OutcomeKind.STOPPED: (HTTPStatus.SERVICE_UNAVAILABLE, "stopping"),
}


class RequestError(Exception):
    """A request the endpoint answers with ``status`` and a JSON error ``code``/``message``."""

    def __init__(self, status: HTTPStatus, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def image_name(raw: str | None) -> str:
    """A safe image name from a client-supplied one (directories dropped), or a generated one."""
    if raw:
        base = PureWindowsPath(PurePosixPath(raw).name).name
        cleaned = _SAFE_NAME.sub("_", base).strip("._")[:200]
        if cleaned:
            return cleaned
    return f"upload-{uuid.uuid4().hex[:12]}"


def parse_multipart(content_type: str, body: bytes) -> tuple[str | None, bytes]:
    """The image part of a ``multipart/form-data`` body: (file name, bytes).

    Takes the field ``image``, else ``file``, else the first part with a file name.

    Raises:
        RequestError: no boundary, or no usable part.
    """
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise RequestError(HTTPStatus.BAD_REQUEST, "bad_multipart", "multipart body without a boundary")
    parts: dict[str, tuple[str | None, bytes]] = {}
    first_file: tuple[str | None, bytes] | None = None
    for chunk in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            continue
        headers = BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        field = headers.get_param("name", header="content-disposition")
        filename = headers.get_filename()
        item = (filename, content.removesuffix(b"\r\n"))
        if isinstance(field, str):
            parts.setdefault(field, item)
        if filename and first_file is None:
            first_file = item
    found = parts.get("image") or parts.get("file") or first_file
    if found is None:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            "no_image",
            "multipart body has no image: send the file in a field named 'image'",
        )
    return found


class HttpSource:
    """Serves the endpoints above on a ``ThreadingHTTPServer`` thread. ``start()`` binds the port."""

    def __init__(
        self, config: HttpConfig, pipeline: Pipeline, models: ModelManager, agent_id: str = ""
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.models = models
        self.agent_id = agent_id
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        #: requests that hit an unexpected error (answered 500 JSON, logged)
        self.errors = 0

    @classmethod
    def from_context(cls, ctx: SourceContext) -> HttpSource | None:
        """The endpoint of the config's ``http`` section; None unless ``http.enabled``."""
        if not ctx.config.http.enabled:
            return None
        return cls(ctx.config.http, ctx.pipeline, ctx.models, ctx.config.agent_id)

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        """The bound port (the configured one, or the one the OS chose for port 0)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self.config.port

    def start(self) -> None:
        """Bind and serve in a background thread.

        Raises:
            OSError: the address cannot be bound (the message names it).
        """
        handler = _make_handler(self)
        try:
            server = ThreadingHTTPServer((self.config.host, self.config.port), handler)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"HTTP endpoint cannot listen on {self.config.host}:{self.config.port}: {exc.strerror}; "
                "change http.port or http.host in the agent config",
            ) from exc
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="http-source", daemon=True
        )
        self._thread.start()
        log.info(
            kv("http_listening", host=self.config.host, port=self.port, auth=self.config.token is not None)
        )

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self._server = self._thread = None

    # --- request handling (called from handler threads) --------------------------------------

    def authorized(self, header: str | None) -> bool:
        if self.config.token is None:
            return True
        expected = f"Bearer {self.config.token.get_secret_value()}"
        return header is not None and hmac.compare_digest(header.encode(), expected.encode())

    def health(self) -> dict[str, Any]:
        active = self.models.active
        return {
            "status": "ok",
            "agent_id": self.agent_id,
            "model": {"name": active.name, "version": active.version, "device": active.backend.device}
            if active
            else None,
            "outbox_depth": self.pipeline.outbox.depth(),
            "intake": self.pipeline.blocked_reason() or "open",
        }

    def classify(self, name: str, data: bytes) -> Outcome:
        """Run ``data`` through the pipeline and wait for its outcome.

        Raises:
            RequestError: 503 when the agent cannot take images now, 504 on timeout.
        """
        if not data:
            raise RequestError(HTTPStatus.BAD_REQUEST, "empty_body", "the request carries no image bytes")
        if self.models.active is None:
            raise RequestError(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "no_model",
                "no model is active on this agent yet; retry later",
            )
        reason = self.pipeline.blocked_reason()
        if reason:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "unavailable", reason)
        done = threading.Event()
        box: list[Outcome] = []

        def on_done(outcome: Outcome) -> None:
            box.append(outcome)
            done.set()

        timeout = self.config.result_timeout_s
        if not self.pipeline.submit(Job(name=name, data=data, on_done=on_done), timeout=timeout):
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "busy", "the agent is busy or stopping; retry")
        if not done.wait(timeout):
            raise RequestError(
                HTTPStatus.GATEWAY_TIMEOUT,
                "timeout",
                f"no result within {timeout:g} s (http.result_timeout_s)",
            )
        return box[0]


def _make_handler(source: HttpSource) -> type[BaseHTTPRequestHandler]:
    max_bytes = int(source.config.max_upload_mb * 2**20)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "leukonet-agent"
        timeout = 60  # socket timeout: a client that stalls mid-upload frees its thread

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            log.debug(kv("http_request", client=self.client_address[0], line=format % args))

        # --- routing --------------------------------------------------------------------------

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            path = urlsplit(self.path).path
            if path == "/healthz":
                self._json(HTTPStatus.OK, source.health())
            elif path in ("/classify", "/Inference"):
                self._error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", f"use POST {path}")
            else:
                self._error(HTTPStatus.NOT_FOUND, "not_found", f"no endpoint {path}; see POST /classify")

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            try:
                self._post()
            except Exception as exc:  # noqa: BLE001 - one request must never cost the client its answer
                source.errors += 1
                log.exception(kv("http_request_failed", path=self.path[:200], error=repr(exc)[:300]))
                with contextlib.suppress(OSError):  # the client may be gone already
                    self._error(
                        HTTPStatus.INTERNAL_SERVER_ERROR,
                        "internal_error",
                        "the agent hit an unexpected error with this request; see its log",
                    )

        def _post(self) -> None:
            url = urlsplit(self.path)
            seed = url.path == "/Inference"
            if url.path not in ("/classify", "/Inference"):
                self._drop_body()
                self._error(HTTPStatus.NOT_FOUND, "not_found", f"no endpoint {url.path}; see POST /classify")
                return
            try:
                if not source.authorized(self.headers.get("Authorization")):
                    self._drop_body()
                    raise RequestError(
                        HTTPStatus.UNAUTHORIZED, "unauthorized", "send Authorization: Bearer <http.token>"
                    )
                name, data = self._image(url.query)
                outcome = source.classify(name, data)
            except RequestError as exc:
                self._answer_error(seed, exc.status, exc.code, exc.message)
                return
            if outcome.kind is OutcomeKind.CLASSIFIED and outcome.result is not None:
                result = outcome.result
                if seed:
                    self._json(
                        HTTPStatus.OK,
                        {
                            "Response": "OK",
                            "Message": f"{result.label} (confidence {result.confidence:.3f})",
                            "Results": {
                                "label": result.label,
                                "confidence": result.confidence,
                                "low_confidence": result.low_confidence,
                                "probabilities": result.probabilities,
                                "result_id": str(result.result_id),
                                "model_name": result.model_name,
                                "model_version": result.model_version,
                            },
                        },
                    )
                else:
                    self._json(HTTPStatus.OK, json.loads(result.to_json()))
                return
            status, code = _STATUS_FOR_OUTCOME.get(
                outcome.kind, (HTTPStatus.SERVICE_UNAVAILABLE, "unavailable")
            )
            self._answer_error(seed, status, code, outcome.error or outcome.kind.value)

        # --- body -----------------------------------------------------------------------------

        def _length(self) -> int:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                raise RequestError(
                    HTTPStatus.LENGTH_REQUIRED, "length_required", "chunked uploads are not supported"
                )
            raw = self.headers.get("Content-Length")
            if raw is None:
                raise RequestError(
                    HTTPStatus.LENGTH_REQUIRED, "length_required", "send a Content-Length header"
                )
            try:
                length = int(raw)
            except ValueError:
                raise RequestError(HTTPStatus.BAD_REQUEST, "bad_length", f"Content-Length {raw!r}") from None
            if length < 0:
                raise RequestError(HTTPStatus.BAD_REQUEST, "bad_length", f"Content-Length {raw!r}")
            if length > max_bytes:
                raise RequestError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "too_large",
                    f"upload of {length} bytes exceeds http.max_upload_mb={source.config.max_upload_mb:g}",
                )
            return length

        def _image(self, query: str) -> tuple[str, bytes]:
            try:
                length = self._length()
            except RequestError:
                self.close_connection = True  # the unread body must not be taken for a next request
                raise
            body = self.rfile.read(length)
            if len(body) < length:
                self.close_connection = True
                raise RequestError(
                    HTTPStatus.BAD_REQUEST, "short_body", "the body ended before Content-Length"
                )
            ctype = self.headers.get("Content-Type") or ""
            if ctype.lower().startswith("multipart/form-data"):
                filename, data = parse_multipart(ctype, body)
                return image_name(filename), data
            wanted = parse_qs(query).get("name", [None])[0] or self.headers.get("X-Image-Name")
            return image_name(wanted), body

        def _drop_body(self) -> None:
            length = self.headers.get("Content-Length")
            if length and length.isdigit() and int(length) <= max_bytes:
                self.rfile.read(int(length))
            else:
                self.close_connection = True

        # --- answers --------------------------------------------------------------------------

        def _answer_error(self, seed: bool, status: HTTPStatus, code: str, message: str) -> None:
            if seed:
                self._json(status, {"Response": "FAILED", "Message": message, "Results": None})
            else:
                self._error(status, code, message)

        def _error(self, status: HTTPStatus, code: str, message: str) -> None:
            self._json(status, {"error": {"code": code, "message": message}})

        def _json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status == HTTPStatus.SERVICE_UNAVAILABLE:
                self.send_header("Retry-After", "5")
            if status == HTTPStatus.UNAUTHORIZED:
                self.send_header("WWW-Authenticate", 'Bearer realm="leukonet-agent"')
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

    return Handler
