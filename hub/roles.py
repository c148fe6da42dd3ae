"""Who may do what: the roles of people, services and agents, and the groups routes allow.

People have one of ``viewer`` (reads), ``reviewer`` (reads, signs results), ``operator`` (reads,
runs rollouts and training, uploads and tags models) or ``admin`` (everything an operator may, and
manages users, API tokens and agents). Services hold API tokens with ``trainer`` (uploads models,
works training jobs, reads) or ``agent`` (downloads bundles, rotates its own credentials). The
table in docs/security.md is the reference; tests/hub/test_identity_matrix.py checks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal


class Role(str, Enum):
    """A role carried by a user, a web session or an API token."""

    VIEWER = "viewer"
    REVIEWER = "reviewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    TRAINER = "trainer"
    AGENT = "agent"


#: roles a person can have (``leukonet hub users add --role``)
PEOPLE_ROLES = (Role.VIEWER, Role.REVIEWER, Role.OPERATOR, Role.ADMIN)
#: roles that read the fleet, results, models, rollouts and training jobs (admin is always allowed)
READERS = (Role.VIEWER, Role.REVIEWER, Role.OPERATOR, Role.TRAINER)
#: roles that change the fleet's models: rollouts, desired models, tags, training queue
OPERATORS = (Role.OPERATOR,)


def may_grant(granter: Role, role: Role) -> bool:
    """Whether a holder of ``granter`` may create an API token carrying ``role``.

    An admin may grant any role; anyone else only their own role (a token never widens access).
    """
    return granter is Role.ADMIN or granter is role


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the audit log names them, and with which role.

    ``name`` is the user name for a person (session or personal token), the token's name for a
    service token, or the agent id for an agent. ``via`` says how they proved it.
    """

    name: str
    role: Role
    via: Literal["config", "token", "session"] = "token"
    user_id: int | None = None
    agent_id: str | None = None
