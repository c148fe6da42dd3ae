"""``leukonet hub users ...`` and ``leukonet hub tokens ...``: people and API tokens, on the hub host.

Like ``leukonet hub agents add``, these work directly on the configured database (``--config``),
so they also work before the web server runs and when every admin is locked out. Each change is
audited with the actor ``cli:<os user>``. Passwords come from a prompt (typed twice) or, for
scripts, one line on standard input (``--password-stdin``); they and new token values are never
logged. A new token's value is printed once.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hub.cli_common import config_option, load_config
from hub.roles import PEOPLE_ROLES, Role

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from hub.db.session import Database

PEOPLE_CHOICE = click.Choice([r.value for r in PEOPLE_ROLES])
ROLE_CHOICE = click.Choice([r.value for r in Role])
password_stdin_option = click.option(
    "--password-stdin", is_flag=True, help="Read the password from one line on standard input (scripts)."
)


def cli_actor() -> str:
    """``cli:<os user>``, the audit actor of these commands."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name in a bare container
        return "cli:unknown"


@contextmanager
def hub_database(config_path: Path | None, what: str) -> Iterator[tuple[Database, Session]]:
    """The configured database and one transaction on it; errors become a clean CLI error naming
    ``what``."""
    from sqlalchemy.exc import SQLAlchemyError

    from hub.db.session import Database
    from hub.identity.users import UserError

    config = load_config(config_path)
    db = Database(config.db_url)
    try:
        with db.transaction() as s:
            yield db, s
    except UserError as exc:
        raise click.ClickException(f"{what}: {exc.message}") from exc
    except SQLAlchemyError as exc:
        first = str(exc).splitlines()[0]
        raise click.ClickException(f"{what} failed: {first}; run `leukonet hub migrate` first?") from exc
    finally:
        db.dispose()


def read_password(from_stdin: bool) -> str:
    """A new password from standard input (one line) or a hidden prompt typed twice."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise click.UsageError("--password-stdin: standard input had no password line")
        return password
    value: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- users -----------------------------------------------------------------------------------


@click.group("users")
def users_cli() -> None:
    """People's dashboard accounts: add, list, disable, enable, reset a password, unlock."""


@users_cli.command("add")
@click.argument("name")
@click.option("--role", required=True, type=PEOPLE_CHOICE, help="viewer, reviewer, operator or admin")
@password_stdin_option
@config_option
def add_user(name: str, role: str, password_stdin: bool, config_path: Path | None) -> None:
    """Add user NAME with --role; the password is prompted for (or read with --password-stdin)."""
    from hub.identity.users import UserError, check_username, create_user, person_role
    from shared.clock import utcnow

    try:
        check_username(name)
        person_role(role)
    except UserError as exc:
        raise click.BadParameter(exc.message, param_hint="NAME") from exc
    password = read_password(password_stdin)
    with hub_database(config_path, f"adding user {name}") as (_, s):
        create_user(s, name, role, password, cli_actor(), utcnow())
    click.echo(f"user {name} added with role {role}")


def _user_json(user: Any, now: datetime) -> dict[str, Any]:
    from hub.identity.users import state_of

    return {
        "username": user.username,
        "role": user.role,
        "state": state_of(user, now),
        "failed_logins": user.failed_logins,
        "locked_until": _iso(user.locked_until),
        "disabled_at": _iso(user.disabled_at),
        "last_login_at": _iso(user.last_login_at),
        "created_at": _iso(user.created_at),
    }


@users_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@config_option
def list_users_cmd(as_json: bool, config_path: Path | None) -> None:
    """Every user: name, role, state (active, locked, disabled), last sign-in."""
    from hub.identity.users import list_users
    from shared.clock import utcnow

    now = utcnow()
    with hub_database(config_path, "listing users") as (_, s):
        rows = [_user_json(u, now) for u in list_users(s)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = r["state"] + (f" until {r['locked_until']}" if r["state"] == "locked" else "")
        click.echo(f"{r['username']}\t{r['role']}\t{state}\t{r['last_login_at'] or 'never'}")


@users_cli.command("disable")
@click.argument("name")
@config_option
def disable(name: str, config_path: Path | None) -> None:
    """Disable NAME: no sign-in; every session and personal API token ends at once."""
    from hub.identity.users import disable_user, get_user
    from shared.clock import utcnow

    with hub_database(config_path, f"disabling {name}") as (_, s):
        ended = disable_user(s, get_user(s, name), cli_actor(), utcnow())
    click.echo(f"user {name} disabled ({ended.sessions} session(s) ended, {ended.tokens} token(s) revoked)")


@users_cli.command("enable")
@click.argument("name")
@config_option
def enable(name: str, config_path: Path | None) -> None:
    """Let a disabled NAME sign in again (old sessions and tokens stay ended)."""
    from hub.identity.users import enable_user, get_user
    from shared.clock import utcnow

    with hub_database(config_path, f"enabling {name}") as (_, s):
        enable_user(s, get_user(s, name), cli_actor(), utcnow())
    click.echo(f"user {name} enabled")


@users_cli.command("reset-password")
@click.argument("name")
@password_stdin_option
@config_option
def reset_password(name: str, password_stdin: bool, config_path: Path | None) -> None:
    """Set NAME's password (prompted, or --password-stdin); ends their sessions and API tokens."""
    from hub.identity.users import get_user, set_password
    from shared.clock import utcnow

    with hub_database(config_path, f"resetting the password of {name}") as (_, s):
        get_user(s, name)  # an unknown name fails before the prompt
    password = read_password(password_stdin)
    with hub_database(config_path, f"resetting the password of {name}") as (_, s):
        ended = set_password(s, get_user(s, name), password, cli_actor(), utcnow())
    click.echo(
        f"password of {name} reset ({ended.sessions} session(s) ended, {ended.tokens} token(s) revoked)"
    )


@users_cli.command("unlock")
@click.argument("name")
@config_option
def unlock(name: str, config_path: Path | None) -> None:
    """Clear NAME's wrong-password count and lockout."""
    from hub.identity.users import get_user, unlock_user
    from shared.clock import utcnow

    with hub_database(config_path, f"unlocking {name}") as (_, s):
        unlock_user(s, get_user(s, name), cli_actor(), utcnow())
    click.echo(f"user {name} unlocked")


# --- tokens ----------------------------------------------------------------------------------


@click.group("tokens")
def tokens_cli() -> None:
    """API tokens kept in the database: create (value printed once), list, revoke."""


@tokens_cli.command("create")
@click.option("--name", required=True, help="what the token is for, e.g. ci-uploads (1-64 characters)")
@click.option("--role", required=True, type=ROLE_CHOICE, help="the token's role")
@click.option("--user", "username", default=None, help="make it a personal token acting for this user")
@click.option("--expires-days", type=click.IntRange(1, 3650), default=None, help="expire after D days")
@config_option
def create(
    name: str, role: str, username: str | None, expires_days: int | None, config_path: Path | None
) -> None:
    """Create a token and print its value once (the hub keeps only its hash)."""
    from hub.identity.tokens import create_token
    from hub.identity.users import get_user
    from hub.roles import may_grant
    from shared.clock import utcnow

    name = name.strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise click.BadParameter("use 1 to 64 printable characters, e.g. ci-uploads", param_hint="--name")
    now = utcnow()
    expires = now + timedelta(days=expires_days) if expires_days else None
    with hub_database(config_path, f"creating token {name}") as (_, s):
        user_id = None
        if username is not None:
            user = get_user(s, username)
            if user.disabled_at is not None:
                raise click.ClickException(f"user {username} is disabled; enable them first")
            if not may_grant(Role(user.role), Role(role)):
                raise click.ClickException(
                    f"user {username} has role {user.role} and may hold only {user.role} tokens; "
                    f"use --role {user.role}, or leave out --user for a service token"
                )
            user_id = user.id
        issued = create_token(
            s, name=name, role=Role(role), actor=cli_actor(), now=now, user_id=user_id, expires_at=expires
        )
    click.echo(
        f"token {issued.token_id} ({name}, role {role}) created; copy the value now, it is not shown again:"
    )
    click.echo(issued.value)


@tokens_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@config_option
def list_tokens(as_json: bool, config_path: Path | None) -> None:
    """Live tokens that are not an agent's: id, name, role, user, expiry, last use."""
    from sqlalchemy import select

    from hub.db.models import User
    from hub.identity.tokens import TokenStore

    with hub_database(config_path, "listing tokens") as (db, s):
        owners = {u.id: u.username for u in s.scalars(select(User))}
        rows = [
            {
                "token_id": t.token_id,
                "name": t.name,
                "role": t.role,
                "user": owners.get(t.user_id) if t.user_id is not None else None,
                "created_by": t.created_by,
                "created_at": _iso(t.created_at),
                "expires_at": _iso(t.expires_at),
                "last_used_at": _iso(t.last_used_at),
            }
            for t in TokenStore(db).list(s)
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(
            f"{r['token_id']}\t{r['name']}\t{r['role']}\t{r['user'] or '-'}\t"
            f"expires {r['expires_at'] or 'never'}\tlast used {r['last_used_at'] or 'never'}"
        )


@tokens_cli.command("revoke")
@click.argument("token_id")
@config_option
def revoke(token_id: str, config_path: Path | None) -> None:
    """Revoke the live token TOKEN_ID (the part after ``lkn_``; see `leukonet hub tokens list`)."""
    from hub.identity.tokens import TokenStore
    from shared.clock import utcnow

    with hub_database(config_path, f"revoking token {token_id}") as (db, s):
        done = TokenStore(db).revoke(s, token_id, cli_actor(), utcnow())
    if not done:
        raise click.ClickException(
            f"there is no live token {token_id[:32]!r}; see `leukonet hub tokens list` for the ids"
        )
    click.echo(f"token {token_id} revoked")
