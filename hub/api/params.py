"""Request input of every ``/api/v1`` route: one JSON body parser, one query parser, one URL check.

Everything a client sends is hostile input:

* A body is parsed from bytes by pydantic's JSON parser, which stops at a nesting depth of 200
  with an error instead of recursing, so a deeply nested body is a 400, never a RecursionError.
  JSON ``NaN`` / ``Infinity`` and numbers too large for a float are refused (they are not JSON,
  and PostgreSQL's ``json`` refuses them).
* PostgreSQL refuses NUL in text, so a NUL character (``\\u0000``) in a path parameter, a query
  name or value, or anywhere in a JSON body (keys included) is a 400 naming where it was.
* Query parameters are validated by a pydantic model per route (:class:`QueryModel`); a bad value
  is a 400 ``invalid_parameter`` naming the parameter.

:func:`parse_body` and :func:`parse_query` only accept the models their route documents with
:func:`hub.api.openapi.documented`, so the OpenAPI document cannot drift from what is validated.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic_core
from flask import g, request
from pydantic import BaseModel, ConfigDict, ValidationError

from hub.errors import ApiError

if TYPE_CHECKING:
    from hub.api.openapi import Operation

M = TypeVar("M", bound=BaseModel)
NUL = "\x00"
#: the key of the current route's :class:`~hub.api.openapi.Operation` in ``flask.g``
OPERATION_KEY = "api_operation"


class QueryModel(BaseModel):
    """Base of the query-string models: unknown parameters are ignored, values arrive as strings."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def validation_message(exc: ValidationError) -> str:
    """Every field error as ``field: message``, joined by ``; `` (``<body>`` for cross-field rules)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '<body>'}: {e['msg']}" for e in exc.errors())


def parameter_message(exc: ValidationError) -> str:
    """Each query-parameter error naming the parameter, e.g. ``limit must be ... got 'abc'``."""
    parts = []
    for e in exc.errors():
        name = ".".join(map(str, e["loc"])) or "query"
        ctx = e.get("ctx") or {}
        if e["type"] == "missing":
            parts.append(f"{name} is required")
            continue
        if e["type"] in ("literal_error", "enum"):
            text = f"{name} must be one of {ctx.get('expected', '')}"
        elif e["type"] == "value_error" and "error" in ctx:
            text = f"{name} {ctx['error']}"
        else:
            text = f"{name}: {e['msg']}"
        parts.append(f"{text}, got {e.get('input')!r}")
    return "; ".join(parts)


def _documented(kind: str, model: type[BaseModel]) -> None:
    """Refuse (as a programming error) a model the current route does not document as ``kind``."""
    op: Operation | None = g.get(OPERATION_KEY)
    documented = getattr(op, kind, None)
    if documented is not model:
        raise TypeError(
            f"route {request.endpoint} parses its {kind} with {model.__name__} but documents "
            f"{getattr(documented, '__name__', None)}; pass the same model to @documented"
        )


def refuse_nul_in_url() -> None:
    """400 ``invalid_parameter`` when a path parameter or a query name or value holds a NUL."""
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str) and NUL in value:
            raise ApiError(
                400, "invalid_parameter", f"path parameter {name} contains a NUL character (\\u0000)"
            )
    for name, value in request.args.items(multi=True):
        if NUL in name or NUL in value:
            raise ApiError(
                400, "invalid_parameter", f"query parameter {name!r} contains a NUL character (\\u0000)"
            )


def _json_path(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) if NUL not in str(p) else repr(p) for p in path) or "<body>"


def find_unstorable(data: Any) -> str | None:
    """Where ``data`` (parsed JSON) holds a string or key with a NUL, or a non-finite number; None if nowhere.

    Walks with an explicit stack (no recursion); the JSON parser already bounded the depth.
    """
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if NUL in value:
                return f"{_json_path(path)} contains a NUL character (\\u0000)"
        elif isinstance(value, float):
            if not math.isfinite(value):
                return f"{_json_path(path)} is not a finite number"
        elif isinstance(value, dict):
            for key, item in value.items():
                if NUL in key:
                    return f"key {_json_path((*path, key))} contains a NUL character (\\u0000)"
                stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, i), item) for i, item in enumerate(value))
    return None


def parse_body(model: type[M], *, optional: bool = False) -> M:
    """The request's JSON body validated against ``model``.

    Args:
        model: the body model the route documents (``@documented(body=model)``).
        optional: an empty body counts as ``{}``.

    Raises:
        ApiError: 400 ``invalid_body`` when the body is not a JSON object (wrong Content-Type,
            not JSON, nested too deep, NaN/Infinity, a NUL character); 422 ``invalid_body``
            with every field error otherwise.
    """
    _documented("body", model)
    raw = request.get_data()
    if not raw and optional:
        raw = b"{}"
    elif not request.is_json:
        raise ApiError(400, "invalid_body", "send a JSON object with Content-Type: application/json")
    try:
        data = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        raise ApiError(400, "invalid_body", f"the body is not JSON this hub accepts: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", f"send a JSON object, not {type(data).__name__}")
    if (problem := find_unstorable(data)) is not None:
        raise ApiError(400, "invalid_body", problem)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_body", validation_message(exc)) from exc


def parse_query(model: type[M], *, hint: str = "") -> M:
    """The query string validated against ``model`` (empty values count as absent).

    Raises:
        ApiError: 400 ``invalid_parameter`` naming each bad parameter (``hint`` first, if given).
    """
    _documented("query", model)
    values = {name: value for name, value in request.args.items() if value != ""}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        message = parameter_message(exc)
        raise ApiError(400, "invalid_parameter", f"{hint} ({message})" if hint else message) from exc
