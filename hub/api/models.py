"""Model registry routes: upload (admin/trainer), list + show + compare (any role), delete (admin,
refused while in use), bundle download (agent/admin)."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify, request, send_file
from pydantic import BaseModel, Field

from hub.api.blueprint import bp
from hub.api.openapi import documented
from hub.api.params import QueryModel, parse_query
from hub.api.schemas import ModelComparison, ModelList, ModelVersionOut
from hub.api.serialize import model_json
from hub.errors import ApiError
from hub.extensions import hub_ext
from hub.roles import OPERATORS, READERS, Role

#: NAME/VERSION of a registered model, e.g. leuko/1.2.0
MODEL_REF = r"^[^/]+/.+$"


class BundleUpload(BaseModel):
    """Multipart body of ``POST /models``."""

    bundle: bytes = Field(title="the signed bundle zip (leukonet trainer export)")


class CompareQuery(QueryModel):
    a: str = Field(pattern=MODEL_REF, title="first model, NAME/VERSION, e.g. leuko/1.2.0")
    b: str = Field(pattern=MODEL_REF, title="second model, NAME/VERSION")


@bp.post("/models")
@documented(
    Role.TRAINER, *OPERATORS, form=BundleUpload, responses={201: ModelVersionOut}, errors=(409, 413, 422, 503)
)
def upload_model() -> tuple[Response, int]:
    """Upload a signed bundle (multipart field ``bundle``): 201 with the model JSON.

    400 not a bundle, 409 the version exists, 413 too large, 422 unsigned / bad signature /
    contract mismatch, 503 the hub has no trusted keys.
    """
    upload = request.files.get("bundle")
    if upload is None:
        raise ApiError(400, "missing_bundle", "send the bundle zip as multipart form field 'bundle'")
    services = hub_ext.services
    row = services.registry.upload(upload.stream, uploaded_by=g.principal.name)
    return jsonify(model_json(row, services.config.public_url)), 201


@bp.get("/models")
@documented(*READERS, Role.AGENT, responses={200: ModelList})
def list_models() -> dict[str, Any]:
    """Every registered model version."""
    services = hub_ext.services
    return {"items": [model_json(r, services.config.public_url) for r in services.registry.list()]}


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def compare_rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Side-by-side rows for metrics, parity and identity fields; numeric rows carry ``delta`` = b - a."""
    rows: list[dict[str, Any]] = []
    for key in (
        "version",
        "sha256",
        "size_bytes",
        "labels",
        "architecture",
        "dataset_fingerprint",
        "created_at",
        "uploaded_by",
    ):
        rows.append(
            {"key": key, "a": a.get(key), "b": b.get(key), "delta": None, "same": a.get(key) == b.get(key)}
        )
    for section in ("metrics", "parity"):
        fa: dict[str, Any] = {}
        fb: dict[str, Any] = {}
        _flatten(section, a.get(section, {}), fa)
        _flatten(section, b.get(section, {}), fb)
        for key in sorted(set(fa) | set(fb)):
            va, vb = fa.get(key), fb.get(key)
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb))
            rows.append(
                {
                    "key": key,
                    "a": va,
                    "b": vb,
                    "delta": (vb - va) if numeric else None,  # type: ignore[operator]
                    "same": va == vb,
                }
            )
    return rows


@bp.get("/models/compare")
@documented(*READERS, Role.AGENT, query=CompareQuery, responses={200: ModelComparison}, errors=(404,))
def compare_models() -> dict[str, Any]:
    """``?a=NAME/VERSION&b=NAME/VERSION``: both models and their metrics side by side."""
    q = parse_query(CompareQuery, hint="a and b must be NAME/VERSION, e.g. leuko/1.2.0")
    services = hub_ext.services
    a = model_json(services.registry.get(*q.a.split("/", 1)), services.config.public_url)
    b = model_json(services.registry.get(*q.b.split("/", 1)), services.config.public_url)
    return {"a": a, "b": b, "rows": compare_rows(a, b)}


@bp.delete("/models/<name>/<version>")
@documented(*OPERATORS, responses={204: None}, errors=(404, 409))
def delete_model(name: str, version: str) -> tuple[str, int]:
    """Delete a model version (204).

    409 ``model_in_use`` while an agent runs or desires it or a rollout involves it.
    """
    hub_ext.services.registry.delete(name, version, actor=g.principal.name)
    return "", 204


@bp.get("/models/<name>/<version>")
@documented(*READERS, Role.AGENT, responses={200: ModelVersionOut}, errors=(404,))
def show_model(name: str, version: str) -> dict[str, Any]:
    """One model version."""
    services = hub_ext.services
    return model_json(services.registry.get(name, version), services.config.public_url)


@bp.get("/models/<name>/<version>/bundle")
@documented(
    Role.AGENT,
    responses={200: "application/zip", 206: "application/zip", 304: None},
    errors=(404, 416),
)
def download_bundle(name: str, version: str) -> Response:
    """The bundle zip, with ``ETag`` = sha256, conditional GET and ``Range`` support."""
    registry = hub_ext.services.registry
    row = registry.get(name, version)
    path = registry.bundle_path(row)
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
