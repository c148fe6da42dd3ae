"""Agent commands: ``leukonet agents list|show|tag|tag-lab|enroll-token|enrollment-tokens|revoke``."""

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
    """Inspect agents: list, show (with model history), tag; tag labs; enroll and revoke agents."""


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


@agents.command("enroll-token")
@click.option("--agent-id", default=None, help="Only this agent id may redeem it.")
@click.option("--lab", default=None, help="Only an agent of this lab may redeem it.")
@click.option(
    "--ttl",
    "ttl_s",
    type=click.IntRange(60, 30 * 86400),
    default=None,
    help="Lifetime in seconds (default: the hub's enrollment.token_ttl_s, one day).",
)
@api_options
def agents_enroll_token(
    agent_id: str | None, lab: str | None, ttl_s: int | None, hub_url: str, token: str | None, as_json: bool
) -> None:
    """Create a single-use enrollment token for one agent install (admin); shown only now."""
    body = {k: v for k, v in (("agent_id", agent_id), ("lab", lab), ("ttl_s", ttl_s)) if v is not None}
    data = OperatorClient(hub_url, token).call("POST", "/agents/enrollment-tokens", json=body)
    if as_json:
        emit_json(data)
        return
    bound = ", ".join(f"{k} {data[k]}" for k in ("agent_id", "lab") if data[k]) or "any agent"
    click.echo(
        f"enrollment token {data['token_id']} ({bound}), valid until {data['expires_at']}, single use:"
    )
    click.echo(f"  {data['token']}")
    click.echo("on the agent machine run:")
    click.echo(f"  {data['command']}")


@agents.command("enrollment-tokens")
@api_options
def agents_enrollment_tokens(hub_url: str, token: str | None, as_json: bool) -> None:
    """List enrollment tokens not yet used or expired (admin); their values are not kept."""
    data = OperatorClient(hub_url, token).call("GET", "/agents/enrollment-tokens")
    if as_json:
        emit_json(data)
        return
    table(
        ["token id", "agent", "lab", "created by", "expires"],
        [
            [t["token_id"], t["agent_id"] or "any", t["lab"] or "any", t["created_by"], t["expires_at"]]
            for t in data["items"]
        ],
    )


@agents.command("revoke")
@click.argument("agent_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@api_options
def agents_revoke(agent_id: str, yes: bool, hub_url: str, token: str | None, as_json: bool) -> None:
    """Revoke AGENT_ID (admin): disconnect it now and refuse it from then on."""
    if not yes:
        click.confirm(
            f"revoke {agent_id}: delete its broker login, revoke its API tokens, refuse its results?",
            abort=True,
        )
    data = OperatorClient(hub_url, token).call("POST", f"/agents/{agent_id}/revoke", json={})
    if as_json:
        emit_json(data)
        return
    click.echo(
        f"{agent_id}: revoked at {data['revoked_at']}; to re-admit it, enroll it with a token "
        f"from `leukonet agents enroll-token --agent-id {agent_id}`"
    )
