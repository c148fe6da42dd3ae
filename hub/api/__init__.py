"""REST API under ``/api/v1``: models, agents (+ tags, history), labs, rollouts, audit,
classifications, ingest stats, training jobs.

Importing this package registers every route module on :data:`bp`.
"""

from hub.api import agents, classifications, ingest, models, rollouts, tags, training
from hub.api.blueprint import bp

__all__ = ["agents", "bp", "classifications", "ingest", "models", "rollouts", "tags", "training"]
