"""The OpenAPI 3.1 document of ``/api/v1``, generated from the models the routes validate with.

Every route of the ``api`` blueprint carries :func:`documented`, which applies the role check
(:func:`hub.auth.require_roles`), refuses NUL characters in the URL, and records an
:class:`Operation`: its body / query / path models, its responses and the errors it may answer.
:func:`build_spec` walks the app's URL map and turns those records into the document with
apispec; request and response models become ``components/schemas`` through pydantic's
``models_json_schema``, so nested models are shared components too.
"""

from __future__ import annotations

import http
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import wraps
from importlib import metadata
from typing import Any, Literal, TypeVar, cast

from apispec import APISpec
from flask import Flask, g
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from hub.api.params import OPERATION_KEY, refuse_nul_in_url
from hub.api.schemas import Error
from hub.auth import require_roles
from hub.roles import Role

F = TypeVar("F", bound=Callable[..., Any])
ATTR = "__api_operation__"
BLUEPRINT = "api"
REF = "#/components/schemas/{model}"
SECURITY = "bearerAuth"
#: Every error has the Error body; 401 / 403 come with every operation, 400 with every one that
#: takes input, 413 with every one that takes a body.
ERROR_DESCRIPTIONS = {
    400: "A malformed parameter or body (invalid_parameter, invalid_body, ...)",
    401: "No or unknown bearer token (unauthorized)",
    403: "The token's role may not call this operation (forbidden)",
    404: "The resource does not exist",
    409: "The request conflicts with the current state",
    413: "The body is larger than the hub's limit (payload_too_large)",
    422: "The body failed validation (invalid_body names each field) or cannot be carried out",
    503: "A dependency is unavailable (e.g. broker_unavailable); nothing was changed, retry later",
}
#: A path segment as Flask's default converter matches it.
PATH_SEGMENT: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": "^[^/]+$"}
Answer = type[BaseModel] | str | None


@dataclass(frozen=True)
class Operation:
    """What :func:`documented` records on a view: who may call it, what it takes and answers.

    ``responses`` maps a status to a response model, to a media type string (a binary body such
    as ``application/zip``), or to None (no body).
    """

    roles: tuple[Role, ...]
    responses: Mapping[int, Answer]
    body: type[BaseModel] | None = None
    body_optional: bool = False
    form: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    path: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    #: callable without credentials (enrollment: the body carries its own single-use token)
    public: bool = False

    def models(self) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
        """Every model the operation names, with the mode its JSON schema is read in."""
        models: list[tuple[type[BaseModel], JsonSchemaMode]] = []
        models += [(m, "validation") for m in (self.body, self.form, self.query, self.path) if m is not None]
        models += [(m, "serialization") for m in self.responses.values() if isinstance(m, type)]
        return models


def documented(
    *roles: Role,
    responses: Mapping[int, Answer],
    body: type[BaseModel] | None = None,
    body_optional: bool = False,
    form: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    path: type[BaseModel] | None = None,
    errors: tuple[int, ...] = (),
    public: bool = False,
) -> Callable[[F], F]:
    """Decorator for an ``/api/v1`` view: ``require_roles(*roles)`` plus its OpenAPI operation.

    ``admin`` may always call it (as with :func:`~hub.auth.require_roles`). Before the view runs,
    a NUL character in a path parameter or query value is a 400; the view then validates its
    input with :func:`~hub.api.params.parse_body` / :func:`~hub.api.params.parse_query` and
    the models given here.

    Args:
        roles: roles besides ``admin`` that may call it.
        responses: status -> response model (JSON), media type (binary) or None (no body).
        body: JSON request body model; ``body_optional`` when an empty body is ``{}``.
        form: multipart/form-data body model (file fields typed ``bytes``).
        query: query-string model (a :class:`~hub.api.params.QueryModel`).
        path: model describing path parameters beyond a plain segment (e.g. an enum).
        errors: error statuses it may answer besides 400 / 401 / 403 / 413.
        public: no credentials needed (``roles`` must then be empty); the view authenticates
            what its body carries itself.
    """
    if public and roles:
        raise ValueError("a public operation takes no roles")
    op = Operation(
        roles=() if public else (Role.ADMIN, *roles),
        responses=responses,
        body=body,
        body_optional=body_optional,
        form=form,
        query=query,
        path=path,
        errors=errors,
        public=public,
    )

    def decorator(view: F) -> F:
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            setattr(g, OPERATION_KEY, op)
            refuse_nul_in_url()
            return view(*args, **kwargs)

        guarded = checked if public else require_roles(*roles)(checked)
        setattr(guarded, ATTR, op)
        return cast(F, guarded)

    return decorator


def operation_of(view: Callable[..., Any]) -> Operation | None:
    """The :class:`Operation` recorded on a view function, or None when it is undocumented."""
    op = getattr(view, ATTR, None)
    return op if isinstance(op, Operation) else None


class UndocumentedRoute(LookupError):
    """An ``/api/v1`` route without :func:`documented`."""


@dataclass(frozen=True)
class _Entry:
    path: str
    method: str
    endpoint: str
    arguments: tuple[str, ...]
    doc: str
    op: Operation


def _entries(app: Flask) -> Iterator[_Entry]:
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".", 1)[0] != BLUEPRINT:
            continue
        view = app.view_functions[rule.endpoint]
        op = operation_of(view)
        if op is None:
            raise UndocumentedRoute(f"{rule.rule} ({rule.endpoint}) has no @documented(...)")
        path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
        arguments = tuple(re.findall(r"{([^{}]+)}", path))
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            yield _Entry(path, method.lower(), rule.endpoint, arguments, view.__doc__ or "", op)


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional field's schema without its ``null`` branch (parameters are absent, never null)."""
    rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    kept = [b for b in schema.get("anyOf", []) if b != {"type": "null"}]
    if not kept:
        return rest
    return {**kept[0], **rest} if len(kept) == 1 else {**rest, "anyOf": kept}


class _Schemas:
    """The JSON schemas of every model the operations name, as ``components/schemas`` entries."""

    def __init__(self, models: list[tuple[type[BaseModel], JsonSchemaMode]]) -> None:
        self.refs, top = models_json_schema(models, ref_template=REF)
        self.defs: dict[str, Any] = top.get("$defs", {})

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(self.refs[(model, mode)])

    def name(self, model: type[BaseModel], mode: JsonSchemaMode) -> str:
        return str(self.refs[(model, mode)]["$ref"]).rsplit("/", 1)[1]

    def parameters(
        self, location: Literal["query", "path"], model: type[BaseModel] | None
    ) -> dict[str, dict[str, Any]]:
        """One parameter object per field of ``model`` (none without a model)."""
        if model is None:
            return {}
        schema = self.defs[self.name(model, "validation")]
        required = set(schema.get("required", []))
        out = {}
        for name, prop in schema.get("properties", {}).items():
            param: dict[str, Any] = {
                "name": name,
                "in": location,
                "required": location == "path" or name in required,
                "schema": _not_null(prop),
            }
            if text := prop.get("description") or prop.get("title"):
                param["description"] = text
            out[name] = param
        return out

    def response(self, status: int, answer: Answer) -> dict[str, Any]:
        out: dict[str, Any] = {"description": http.HTTPStatus(status).phrase}
        if isinstance(answer, str):
            out["content"] = {answer: {"schema": {"type": "string", "format": "binary"}}}
        elif answer is not None:
            out["content"] = {"application/json": {"schema": self.ref(answer, "serialization")}}
        return out


def _summary(doc: str, endpoint: str) -> tuple[str, str]:
    lines = [line.strip() for line in doc.strip().splitlines()]
    summary = lines[0] if lines and lines[0] else endpoint.split(".", 1)[1].replace("_", " ")
    return summary, "\n".join(lines[1:]).strip()


def _operation(entry: _Entry, schemas: _Schemas) -> dict[str, Any]:
    op = entry.op
    summary, details = _summary(entry.doc, entry.endpoint)
    roles = ", ".join(r.value for r in op.roles) or "none (public)"
    path_params = schemas.parameters("path", op.path)
    parameters = [
        path_params.get(name, {"name": name, "in": "path", "required": True, "schema": dict(PATH_SEGMENT)})
        for name in entry.arguments
    ]
    parameters += schemas.parameters("query", op.query).values()
    out: dict[str, Any] = {
        "operationId": entry.endpoint.split(".", 1)[1],
        "tags": [entry.path.removeprefix("/api/v1/").split("/", 1)[0]],
        "summary": summary,
        "description": f"{details}\n\nRoles: {roles}.".strip(),
        "x-roles": [r.value for r in op.roles],
        "parameters": parameters,
    }
    if op.public:
        out["security"] = []  # overrides the document's bearerAuth requirement
    if op.body is not None:
        out["requestBody"] = {
            "required": not op.body_optional,
            "content": {"application/json": {"schema": schemas.ref(op.body, "validation")}},
        }
    elif op.form is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"multipart/form-data": {"schema": schemas.ref(op.form, "validation")}},
        }
    errors = set(op.errors) if op.public else {401, 403, *op.errors}
    if parameters or "requestBody" in out:
        errors.add(400)
    if "requestBody" in out:
        errors.add(413)
    responses = {str(s): schemas.response(s, answer) for s, answer in sorted(op.responses.items())}
    for status in sorted(errors):
        responses[str(status)] = {
            "description": ERROR_DESCRIPTIONS.get(status, http.HTTPStatus(status).phrase),
            "content": {"application/json": {"schema": schemas.ref(Error, "serialization")}},
        }
    out["responses"] = responses
    return out


def _version() -> str:
    try:
        return metadata.version("leukonet")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_spec(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of the ``api`` blueprint registered on ``app``.

    Raises:
        UndocumentedRoute: a route of the blueprint has no :func:`documented`.
    """
    entries = list(_entries(app))
    wanted: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(Error, "serialization"): None}
    for entry in entries:
        wanted.update(dict.fromkeys(entry.op.models()))
    schemas = _Schemas(list(wanted))
    spec = APISpec(
        title="leukonet hub API",
        version=_version(),
        openapi_version="3.1.0",
        info={
            "description": "Edge-to-hub leukemia screening: agents, models, rollouts, classifications, "
            "training jobs. Send `Authorization: Bearer <token>` with an API token (Account page, "
            "`leukonet hub tokens create`, or the config's bootstrap tokens); "
            'every error is `{"error": {"code": ..., "message": ...}}`.'
        },
        security=[{SECURITY: []}],
    )
    spec.components.security_scheme(
        SECURITY, {"type": "http", "scheme": "bearer", "description": "an API token scoped to one role"}
    )
    parameter_models = {
        schemas.name(m, "validation") for e in entries for m in (e.op.query, e.op.path) if m is not None
    }
    for name, schema in sorted(schemas.defs.items()):
        if name not in parameter_models:
            spec.components.schema(name, schema)
    paths: dict[str, dict[str, Any]] = {}
    for entry in entries:
        paths.setdefault(entry.path, {})[entry.method] = _operation(entry, schemas)
    for path, operations in sorted(paths.items()):
        spec.path(path=path, operations=operations)
    return spec.to_dict()
