"""Agent commands: ``leukonet agents list|show|tag|tag-lab``."""

from __future__ import annotations

import click

from hub.operator.common import (
    OperatorClient,
    api_options,
    emit_json,
    model_label,
    pairs,
    table,
)


@click.group("agents")
def agents() -> None:
    """Inspect agents: list, show (with model history), tag; tag labs."""


@agents.command("list")
@click.option("--tag", default=None, help="Only agents with this tag (on the agent or its lab).")
@api_options
def agents_list(tag: str | None, hub_url: str, token: str | None, as_json: bool) -> None:
    """List agents with state, running and desired model, tags, last seen."""
    data = OperatorClient(hub_url, token).call("GET", "/agents", params={"tag": tag} if tag else None)
    if as_json:
        emit_json(data)
        return
    table(
        ["agent", "lab", "state", "model", "desired", "tags", "last seen"],
        [
            [
                a["agent_id"],
                a["lab"],
                a["state"],
                model_label(a["model_name"], a["model_version"]),
                model_label(a["desired_model_name"], a["desired_model_version"]),
                ",".join(a.get("tags", [])),
                a["last_seen"] or "never",
            ]
            for a in data["items"]
        ],
    )


@agents.command("tag")
@click.argument("agent_id")
@click.option("--tag", "tags", multiple=True, help="A tag (repeat); the set replaces the agent's tags.")
@api_options
def agents_tag(agent_id: str, tags: tuple[str, ...], hub_url: str, token: str | None, as_json: bool) -> None:
    """Set AGENT_ID's tags (admin); no --tag clears them."""
    data = OperatorClient(hub_url, token).call("PUT", f"/agents/{agent_id}/tags", json={"tags": list(tags)})
    if as_json:
        emit_json(data)
        return
    click.echo(f"{agent_id}: tags {', '.join(data['tags']) or '(none)'}")


@agents.command("tag-lab")
@click.argument("lab")
@click.option("--tag", "tags", multiple=True, help="A tag (repeat); the set replaces the lab's tags.")
@api_options
def agents_tag_lab(lab: str, tags: tuple[str, ...], hub_url: str, token: str | None, as_json: bool) -> None:
    """Set LAB's tags (admin): every agent of the lab matches them in rollout targets."""
    data = OperatorClient(hub_url, token).call("PUT", f"/labs/{lab}/tags", json={"tags": list(tags)})
    if as_json:
        emit_json(data)
        return
    click.echo(f"lab {lab} ({data['agents']} agents): tags {', '.join(data['tags']) or '(none)'}")


@agents.command("show")
@click.argument("agent_id")
@api_options
def agents_show(agent_id: str, hub_url: str, token: str | None, as_json: bool) -> None:
    """Show one agent, vitals included."""
    client = OperatorClient(hub_url, token)
    data = client.call("GET", f"/agents/{agent_id}")
    history = client.call("GET", f"/agents/{agent_id}/history")
    if as_json:
        emit_json({**data, "history": history})
        return
    pairs(
        data,
        [
            "agent_id",
            "lab",
            "state",
            "model_name",
            "model_version",
            "desired_model_name",
            "desired_model_version",
            "device",
            "tags",
            "lab_tags",
            "last_seen",
            "vitals",
        ],
    )
    if history["events"]:
        click.echo("\nmodel history (newest first)")
        table(
            ["sent", "event", "model", "rollout", "detail"],
            [
                [
                    e["sent_at"],
                    e["event"],
                    model_label(e["model_name"], e["model_version"]),
                    e["rollout_id"] or "-",
                    (e["detail"] or "")[:60],
                ]
                for e in history["events"][:20]
            ],
        )
