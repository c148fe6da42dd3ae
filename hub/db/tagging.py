"""The tag rule, defined once: an agent carries a tag when it is tagged itself or its lab is.

Used by the agents list (``?tag=``) and by rollout targeting (``tags``), as one SQL condition.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, or_, select

from hub.db.models import Agent, AgentTag, LabTag


def carrying(tags: Sequence[str]) -> ColumnElement[bool]:
    """``WHERE`` condition on :class:`Agent`: the agent or its lab carries one of ``tags``."""
    tagged = select(AgentTag.agent_id).where(AgentTag.tag.in_(tags))
    labs = select(LabTag.lab).where(LabTag.tag.in_(tags))
    return or_(Agent.agent_id.in_(tagged), Agent.lab.in_(labs))
