"""Evidence image routes: agents upload the image a result was made from, reviewers read it.

``PUT /evidence/<key>`` (the key: the image's sha256) takes the image as the raw body (agent;
admin); ``GET`` serves it to the people who review results (reviewer, operator, admin), not to
viewers, services or agents: an image of a patient's blood is clinical data. docs/evidence.md is the
user's page.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Literal

from flask import Response, g, jsonify, request, send_file
from pydantic import BaseModel, Field

from hub.api.blueprint import bp
from hub.api.openapi import documented
from hub.errors import ApiError
from hub.evidence import EvidenceRefused, check_key, check_kind, evidence_json
from hub.evidence.verify import EXTENSIONS, SHA256_RE
from hub.extensions import hub_ext
from hub.roles import Role
from shared.logs import kv

log = logging.getLogger(__name__)

#: who may see evidence images: the people who review results (admin is always allowed)
EVIDENCE_READERS = (Role.REVIEWER, Role.OPERATOR)
#: cache in the browser only (never a shared cache), and ask the hub again each time
CACHE_CONTROL = "private, no-cache"


class EvidencePath(BaseModel):
    key: str = Field(
        pattern=SHA256_RE.pattern,
        title="the image's sha256: the image_sha256 of the results made from it (64 lower-case hex)",
    )


class EvidenceOut(BaseModel):
    """A stored evidence image's metadata (the image itself: ``GET /evidence/<key>``)."""

    sha256: str = Field(title="the key: sha256 of the image the agent classified")
    kind: Literal["original", "preview"] = Field(title="original bytes, or a preview the agent made")
    content_type: str = Field(title="image/jpeg, image/png, image/tiff or image/bmp (found by the hub)")
    content_sha256: str = Field(title="sha256 of the stored bytes (the key, for an original)")
    size_bytes: int = Field(title="size of the stored bytes")
    width: int | None = Field(title="pixels across")
    height: int | None = Field(title="pixels down")
    agent_id: str = Field(title="the agent that uploaded it")
    stored_at: datetime = Field(title="when the hub stored it (retention counts from here)")
    created: bool = Field(title="true: stored by this request; false: the hub had it already")


def _drain(length: int) -> None:
    """Read and drop the ``length`` bytes of the body (bounded by the caller's size check)."""
    left = length
    while left > 0 and (chunk := request.stream.read(min(left, 1 << 20))):
        left -= len(chunk)


def _uploader() -> str:
    principal = g.principal
    return str(principal.agent_id or principal.name)


@bp.put("/evidence/<key>")
@documented(
    Role.AGENT, path=EvidencePath, responses={200: EvidenceOut, 201: EvidenceOut}, errors=(411, 413, 422)
)
def put_evidence(key: str) -> tuple[Response, int]:
    """Upload the image a result was made from (the raw body); 201 stored, 200 already there.

    Headers: ``X-Evidence-Kind`` ``original`` (the body is the bytes the agent classified and must
    hash to the key) or ``preview`` (a JPEG rendition; ``X-Content-SHA256`` must be its sha256), and
    ``Content-Length``. An existing key answers 200 and changes nothing (the body is read and
    dropped). 400 bad key, kind or digest, or an empty body; 411 no Content-Length; 413 over
    ``evidence.max_bytes`` (refused before the body is read); 422 not a JPEG / PNG / TIFF / BMP
    image, or over ``evidence.max_pixels``.
    """
    store = hub_ext.services.evidence
    agent = _uploader()
    try:
        key = check_key(key, "key")
        length = request.content_length
        if length is None:
            raise EvidenceRefused(411, "length_required", "send the body with a Content-Length header")
        if length > store.max_bytes:  # before a byte of the body is read
            raise EvidenceRefused(
                413,
                "payload_too_large",
                f"evidence of {length} bytes is over this hub's evidence.max_bytes={store.max_bytes}; "
                "send a preview (evidence.mode: preview on the agent) or raise the hub's limit",
            )
        # From here the body (within max_bytes) is read even when it is not needed: a server that
        # closes a connection with unread bytes resets it, and the client would lose the answer.
        existing = store.find(key)
        if existing is not None and store.path(key).is_file():
            _drain(length)
            return jsonify({**evidence_json(existing), "created": False}), 200
        try:
            kind = check_kind(request.headers.get("X-Evidence-Kind"))
            declared = request.headers.get("X-Content-SHA256")
            if declared is not None:
                declared = check_key(declared.strip().lower(), "X-Content-SHA256")
        except EvidenceRefused:
            _drain(length)
            raise
    except EvidenceRefused as exc:
        raise store.refuse(exc, agent, key) from None
    row, created = store.put(key, kind, declared, request.stream, length, agent)
    if created:
        log.info(kv("evidence_stored", sha256=key, kind=kind, bytes=length, agent=agent))
    return jsonify({**evidence_json(row), "created": created}), 201 if created else 200


@bp.get("/evidence/<key>")
@documented(*EVIDENCE_READERS, path=EvidencePath, responses={200: "image/*", 304: None}, errors=(404,))
def get_evidence(key: str) -> Response:
    """The evidence image, with its own content type, ``ETag`` = key and conditional GET.

    Served ``Cache-Control: private, no-cache`` and ``X-Content-Type-Options: nosniff``; the
    headers ``X-Evidence-Kind`` and ``X-Content-SHA256`` say what it is. 404 when the hub has none.
    """
    store = hub_ext.services.evidence
    key = check_key(key, "key")
    row = store.find(key)
    path = store.path(key)
    if row is None:
        raise ApiError(404, "evidence_not_found", f"the hub has no evidence image {key}")
    if not path.is_file():
        log.error(kv("evidence_file_missing", sha256=key, path=str(path)))
        raise ApiError(
            404,
            "evidence_not_found",
            f"evidence image {key} is recorded but its file is missing; the agent's next upload "
            "of it restores it",
        )
    resp = send_file(
        path,
        mimetype=row.content_type,
        conditional=True,
        etag=key,
        download_name=f"{key}.{EXTENSIONS.get(row.content_type, 'bin')}",
    )
    resp.headers["Cache-Control"] = CACHE_CONTROL
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Evidence-Kind"] = row.kind
    resp.headers["X-Content-SHA256"] = row.content_sha256
    principal = g.principal  # who looked at which image: images are clinical data
    log.info(kv("evidence_served", sha256=key, kind=row.kind, by=principal.name, role=principal.role.value))
    return resp
