"""REST API under ``/api/v1``: models, agents, classifications, ingest stats.

Importing this package registers every route module on :data:`bp`.
"""

from hub.api import agents, classifications, ingest, models
from hub.api.blueprint import bp

__all__ = ["agents", "bp", "classifications", "ingest", "models"]
