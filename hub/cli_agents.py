"""``leukonet hub agents add|list``: register the agents the hub takes messages from.

With ``ingest.auto_register_agents`` off (production), results, statuses and events from an agent
id the hub has not registered are refused and counted as ``unknown_agent``. Until enrollment with
per-agent credentials exists, an admin registers each agent here, on the hub host (it writes to the
hub's database directly).
"""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from hub.cli_common import config_option, load_config
from shared.topics import TopicError, validate_agent_id


@click.group("agents")
def agents_cli() -> None:
    """Register agents (needed when ingest.auto_register_agents is off)."""


@agents_cli.command("add")
@click.argument("agent_id")
@click.option("--lab", default="", help="lab name shown until the agent reports its own")
@config_option
def add(agent_id: str, lab: str, config_path: Path | None) -> None:
    """Register AGENT_ID (idempotent: an agent already registered is left as it is)."""
    from hub.db.models import Agent
    from hub.db.session import Database

    try:
        validate_agent_id(agent_id)
    except TopicError as exc:
        raise click.BadParameter(str(exc), param_hint="AGENT_ID") from exc
    config = load_config(config_path)
    db = Database(config.db_url)
    try:
        with db.transaction() as s:
            if s.scalar(select(Agent.id).where(Agent.agent_id == agent_id)) is not None:
                click.echo(f"agent {agent_id} is already registered")
                return
            s.add(Agent(agent_id=agent_id, lab=lab, state="unknown", vitals={}))
    except SQLAlchemyError as exc:
        raise click.ClickException(
            f"registering {agent_id} failed: {exc}; run `leukonet hub migrate` first?"
        ) from exc
    finally:
        db.dispose()
    click.echo(f"agent {agent_id} registered" + (f" (lab {lab})" if lab else ""))


@agents_cli.command("list")
@config_option
def list_agents(config_path: Path | None) -> None:
    """Registered agents: id, lab, state, last seen."""
    from hub.db.models import Agent
    from hub.db.session import Database
    from hub.db.types import iso

    config = load_config(config_path)
    db = Database(config.db_url)
    try:
        with db.session() as s:
            for a in s.scalars(select(Agent).order_by(Agent.agent_id)):
                click.echo(f"{a.agent_id}\t{a.lab or '-'}\t{a.state}\t{iso(a.last_seen) or 'never'}")
    finally:
        db.dispose()
