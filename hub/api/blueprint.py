"""The ``api`` blueprint object (routes live in the sibling modules)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")
