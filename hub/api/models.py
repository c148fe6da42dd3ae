"""Model registry routes: upload (admin/trainer), list + show (any role), bundle download (agent/admin)."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify, request, send_file

from hub.api.blueprint import bp
from hub.api.serialize import model_json
from hub.auth import require_roles
from hub.config import Role
from hub.errors import ApiError
from hub.extensions import hub_ext
from hub.registry.service import RegistryError


def _registry_error(exc: RegistryError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message)


@bp.post("/models")
@require_roles(Role.TRAINER)
def upload_model() -> tuple[Response, int]:
    """Multipart upload, file field ``bundle``: 201 with the model JSON."""
    upload = request.files.get("bundle")
    if upload is None:
        raise ApiError(400, "missing_bundle", "send the bundle zip as multipart form field 'bundle'")
    services = hub_ext.services
    try:
        row = services.registry.upload(upload.stream, uploaded_by=g.principal.name)
    except RegistryError as exc:
        raise _registry_error(exc) from exc
    return jsonify(model_json(row, services.config.public_url)), 201


@bp.get("/models")
@require_roles(Role.TRAINER, Role.AGENT)
def list_models() -> dict[str, Any]:
    services = hub_ext.services
    return {"items": [model_json(r, services.config.public_url) for r in services.registry.list()]}


@bp.get("/models/<name>/<version>")
@require_roles(Role.TRAINER, Role.AGENT)
def show_model(name: str, version: str) -> dict[str, Any]:
    services = hub_ext.services
    try:
        return model_json(services.registry.get(name, version), services.config.public_url)
    except RegistryError as exc:
        raise _registry_error(exc) from exc


@bp.get("/models/<name>/<version>/bundle")
@require_roles(Role.AGENT)
def download_bundle(name: str, version: str) -> Response:
    """The zip, with ``ETag`` = sha256, conditional GET and ``Range`` support."""
    registry = hub_ext.services.registry
    try:
        row = registry.get(name, version)
        path = registry.bundle_path(row)
    except RegistryError as exc:
        raise _registry_error(exc) from exc
    resp = send_file(
        path,
        mimetype="application/zip",
        as_attachment=True,
        download_name=f"{row.name}-{row.version}.zip",
        conditional=True,
        etag=row.sha256,
        max_age=3600,
    )
    resp.headers["X-Bundle-Sha256"] = row.sha256
    return resp
