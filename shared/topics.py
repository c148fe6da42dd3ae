"""The MQTT topic grammar: the only place topics are built or parsed.

Agent-owned topics are ``leukonet/v1/agents/{agent_id}/{kind}`` with kind one of
``results``, ``status`` (retained, last will = offline) and ``events``. The hub owns
``leukonet/v1/agents/{agent_id}/desired`` (retained desired model).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

PREFIX = "leukonet/v1"
AGENT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_AGENT_ID_RE = re.compile(rf"^{AGENT_ID_PATTERN}$")
_TOPIC_RE = re.compile(rf"^{re.escape(PREFIX)}/agents/(?P<agent_id>{AGENT_ID_PATTERN})/(?P<kind>[a-z]+)$")


class Kind(str, Enum):
    """Topic kinds. Agents publish RESULTS, STATUS and EVENTS; the hub publishes DESIRED."""

    RESULTS = "results"
    STATUS = "status"
    EVENTS = "events"
    DESIRED = "desired"


AGENT_KINDS = (Kind.RESULTS, Kind.STATUS, Kind.EVENTS)


class TopicError(ValueError):
    """A topic or agent id that does not follow the grammar."""


@dataclass(frozen=True)
class Topic:
    agent_id: str
    kind: Kind


def validate_agent_id(agent_id: str) -> str:
    """Return ``agent_id`` if it can be used in a topic, else raise :class:`TopicError`."""
    if not _AGENT_ID_RE.match(agent_id or ""):
        raise TopicError(
            f"agent id {agent_id!r} is not valid: use 1-64 characters from A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit"
        )
    return agent_id


def build(agent_id: str, kind: Kind | str) -> str:
    """Build the topic of ``kind`` for ``agent_id``."""
    return f"{PREFIX}/agents/{validate_agent_id(agent_id)}/{Kind(kind).value}"


def parse(topic: str) -> Topic:
    """Parse a concrete topic; raise :class:`TopicError` when it is not ours."""
    m = _TOPIC_RE.match(topic)
    if not m:
        raise TopicError(f"topic {topic!r} does not match {PREFIX}/agents/<agent_id>/<kind>")
    try:
        kind = Kind(m.group("kind"))
    except ValueError as exc:
        raise TopicError(f"topic {topic!r} has unknown kind {m.group('kind')!r}") from exc
    return Topic(agent_id=m.group("agent_id"), kind=kind)


def subscription(kind: Kind | str, share_group: str | None = None) -> str:
    """Wildcard filter for ``kind`` from every agent, optionally as a shared subscription."""
    pattern = f"{PREFIX}/agents/+/{Kind(kind).value}"
    return f"$share/{share_group}/{pattern}" if share_group else pattern
