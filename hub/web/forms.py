"""Reading the people and token forms: each field checked, errors naming the field and the fix."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from hub.roles import Role

TOKEN_NAME_CHARS = 64
MAX_EXPIRES_DAYS = 3650


class FormError(ValueError):
    """A form field the hub refuses; the message names the field and what to enter."""


def token_name(value: str) -> str:
    """A token's display name: 1 to 64 printable characters."""
    name = value.strip()
    if not name or len(name) > TOKEN_NAME_CHARS or not name.isprintable():
        raise FormError(f"name: enter 1 to {TOKEN_NAME_CHARS} printable characters (e.g. ci-uploads)")
    return name


def role_choice(value: str, allowed: Iterable[Role]) -> Role:
    """The role named ``value`` when it is one of ``allowed``."""
    allowed = list(allowed)
    for role in allowed:
        if role.value == value:
            return role
    names = ", ".join(r.value for r in allowed)
    raise FormError(f"role: {value[:32]!r} cannot be chosen here; choose one of: {names}")


def expires_at(days: str, now: datetime) -> datetime | None:
    """``now`` plus ``days`` (whole days, 1 to 3650), or None for a token that does not expire."""
    days = days.strip()
    if not days:
        return None
    if not days.isdigit() or not 1 <= int(days) <= MAX_EXPIRES_DAYS:
        raise FormError(
            f"expires in days: enter a whole number from 1 to {MAX_EXPIRES_DAYS}, or leave it empty"
        )
    return now + timedelta(days=int(days))


def new_password(password: str, confirm: str) -> str:
    """``password`` when the confirmation matches (the hub's rules are checked where it is set)."""
    if password != confirm:
        raise FormError("new password: the two entries differ; type the same password twice")
    return password
