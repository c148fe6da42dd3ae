"""REST API under ``/api/v1``: models, agents (+ tags, history), labs, rollouts, audit,
classifications, evidence images, ingest stats, training jobs; and its documentation
(``/api/v1/openapi.json``, ``/api/docs``) on the separate, unauthenticated :data:`docs_bp`.

Importing this package registers every route module on :data:`bp`.
"""

from hub.api import (
    agents,
    classifications,
    enrollment,
    evidence,
    exports,
    ingest,
    models,
    reviews,
    rollouts,
    tags,
    training,
)
from hub.api.blueprint import bp
from hub.api.docs import bp as docs_bp

__all__ = [
    "agents",
    "bp",
    "classifications",
    "docs_bp",
    "enrollment",
    "evidence",
    "exports",
    "ingest",
    "models",
    "reviews",
    "rollouts",
    "tags",
    "training",
]
