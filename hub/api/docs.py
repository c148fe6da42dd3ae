"""``GET /api/v1/openapi.json`` and the ``GET /api/docs`` page (no auth: documentation, like /healthz).

The document is built once per app, on first request, from the routes registered on it. The
page is rendered on the server from that same document (no script, nothing from a CDN).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template

from hub.api.openapi import build_spec

bp = Blueprint("api_docs", __name__)
EXTENSION = "leukonet.openapi"


def openapi_document() -> dict[str, Any]:
    """The current app's OpenAPI document (built on first use, then kept on the app)."""
    spec: dict[str, Any] | None = current_app.extensions.get(EXTENSION)
    if spec is None:
        spec = current_app.extensions[EXTENSION] = build_spec(current_app)
    return spec


@bp.get("/api/v1/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI 3.1 document of every ``/api/v1`` operation."""
    return jsonify(openapi_document())


def code_spans(text: str) -> list[tuple[bool, str]]:
    """``text`` as (is_code, part) pairs: backtick spans (Markdown, or RST double backticks) are code."""
    pieces = re.split(r"(`+)(.+?)\1", text)
    out = [(False, pieces[0])] if pieces[0] else []
    for i in range(1, len(pieces), 3):
        out.append((True, pieces[i + 1]))
        if pieces[i + 2]:
            out.append((False, pieces[i + 2]))
    return out


def _meaning(field: str, prop: dict[str, Any]) -> str:
    """A field's description or title, unless the title is only pydantic's one made from the name."""
    text = str(prop.get("description") or prop.get("title", ""))
    return "" if text == field.replace("_", " ").title() else text


def _schema_name(schema: dict[str, Any] | None) -> str:
    """A short type for a person: ``AgentOut``, ``array of string``, ``integer | null``, ``a | b``."""
    if not schema:
        return "any"
    if ref := schema.get("$ref"):
        return str(ref).rsplit("/", 1)[1]
    if branches := schema.get("anyOf") or schema.get("oneOf"):
        return " | ".join(_schema_name(b) for b in branches)
    if "enum" in schema:
        return " | ".join(map(str, schema["enum"]))
    if "const" in schema:
        return repr(schema["const"])
    kind = str(schema.get("type", "any"))
    if kind == "array":
        return f"array of {_schema_name(schema.get('items'))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {_schema_name(schema['additionalProperties'])}"
    if schema.get("format") in ("binary", "date-time"):
        return str(schema["format"])
    return kind


def schema_rows(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Each component schema with its fields (name, type, required, title) for the page."""
    rows = []
    for name, schema in sorted(spec["components"]["schemas"].items()):
        required = set(schema.get("required", []))
        rows.append(
            {
                "name": name,
                "description": code_spans(schema.get("description", "")),
                "kind": "" if "properties" in schema else _schema_name(schema),
                "fields": [
                    {
                        "name": field,
                        "type": _schema_name(prop),
                        "required": field in required,
                        "title": _meaning(field, prop),
                    }
                    for field, prop in schema.get("properties", {}).items()
                ],
            }
        )
    return rows


def _content_schema(obj: dict[str, Any]) -> tuple[str, str]:
    """(media type, schema name) of a request body or response object; empty when it has none."""
    for media, content in obj.get("content", {}).items():
        return media, _schema_name(content.get("schema"))
    return "", ""


def operations_by_tag(spec: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The document's operations as plain rows for the page, grouped by tag, in path order."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path, item in spec["paths"].items():
        for method, op in item.items():
            body_media, body_schema = _content_schema(op.get("requestBody", {}))
            groups[op["tags"][0]].append(
                {
                    "id": op["operationId"],
                    "method": method.upper(),
                    "path": path,
                    "summary": code_spans(op["summary"]),
                    # the roles have their own row on the page
                    "description": code_spans(op["description"].rsplit("Roles:", 1)[0].strip()),
                    "roles": op["x-roles"],
                    "parameters": [
                        {
                            "name": p["name"],
                            "in": p["in"],
                            "required": p["required"],
                            "schema": _schema_name(p["schema"]),
                            "description": _meaning(p["name"], p),
                        }
                        for p in op["parameters"]
                    ],
                    "body": body_schema,
                    "body_media": body_media,
                    "body_required": op.get("requestBody", {}).get("required", False),
                    "responses": [
                        {"status": status, "description": r["description"], "schema": _content_schema(r)[1]}
                        for status, r in op["responses"].items()
                    ],
                }
            )
    return dict(sorted(groups.items()))


@bp.get("/api/docs")
def api_docs() -> str:
    """The API reference page, rendered from the OpenAPI document."""
    spec = openapi_document()
    return render_template(
        "api_docs.html",
        info=spec["info"],
        info_description=code_spans(spec["info"]["description"]),
        groups=operations_by_tag(spec),
        schemas=schema_rows(spec),
    )
