"""Staged rollout commands: ``leukonet rollout start|list|status|pause|resume|abort|rollback``."""

from __future__ import annotations

import time
from typing import Any

import click

from hub.operator.common import (
    WATCH_EXIT,
    WATCH_TIMEOUT_OPTION,
    OperatorClient,
    api_options,
    emit_json,
    model_label,
    pairs,
    table,
    watch_until_final,
)


@click.group("rollout")
def rollout() -> None:
    """Staged rollouts: start, list, status (--watch), pause, resume, abort, rollback."""


def _stages(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(p.strip().rstrip("%")) for p in value.split(",") if p.strip()]
    except ValueError:
        raise click.BadParameter(
            f"use comma-separated percentages such as 10,50,100, got {value!r}"
        ) from None


@rollout.command("start")
@click.argument("name")
@click.argument("version")
@click.option("--all", "all_agents", is_flag=True, help="Target every agent the hub knows.")
@click.option("--lab", "labs", multiple=True, help="Target agents of this lab (repeat).")
@click.option(
    "--tag", "tags", multiple=True, help="Target agents carrying this tag or whose lab does (repeat)."
)
@click.option("--agent", "agent_ids", multiple=True, help="Target this agent id (repeat).")
@click.option(
    "--stages", default=None, help="Cumulative percentages per stage, e.g. 10,50,100 (hub default)."
)
@click.option(
    "--success-threshold",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Fraction of a stage that must activate before the next starts (hub default 0.9).",
)
@click.option(
    "--error-threshold",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="Fraction of a stage allowed to fail before --on-failure applies (hub default 0.2).",
)
@click.option(
    "--on-failure",
    type=click.Choice(["pause", "rollback"]),
    default=None,
    help="What the error threshold does (hub default pause).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.IntRange(1),
    default=None,
    help="Seconds an agent may stay silent before it counts as failed (hub default 900).",
)
@api_options
def rollout_start(
    name: str,
    version: str,
    all_agents: bool,
    labs: tuple[str, ...],
    tags: tuple[str, ...],
    agent_ids: tuple[str, ...],
    stages: str | None,
    success_threshold: float | None,
    error_threshold: float | None,
    on_failure: str | None,
    timeout_s: int | None,
    hub_url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Roll NAME VERSION out to one target (--all, --lab, --tag or --agent) in stages (admin)."""
    chosen = [
        flag
        for flag, on in (("--all", all_agents), ("--lab", labs), ("--tag", tags), ("--agent", agent_ids))
        if on
    ]
    if len(chosen) != 1:
        raise click.UsageError(
            "choose exactly one target: --all, --lab, --tag or --agent"
            + (f" (got {', '.join(chosen)})" if chosen else "")
        )
    body: dict[str, Any] = {
        "model_name": name,
        "model_version": version,
        "target": {"all": True}
        if all_agents
        else {"labs": list(labs)}
        if labs
        else {"tags": list(tags)}
        if tags
        else {"agents": list(agent_ids)},
    }
    for key, value in (
        ("stages", _stages(stages)),
        ("success_threshold", success_threshold),
        ("error_threshold", error_threshold),
        ("on_failure", on_failure),
        ("timeout_s", timeout_s),
    ):
        if value is not None:
            body[key] = value
    data = OperatorClient(hub_url, token).call("POST", "/rollouts", json=body)
    if as_json:
        emit_json(data)
        return
    click.echo(
        f"started rollout {data['rollout_id']}: {name} {version} to {data['totals']['size']} agents "
        f"in stages {','.join(map(str, data['stages']))}"
    )
    _print_rollout(data)


@rollout.command("list")
@click.option("--state", default=None, help="Only rollouts in this state (running, paused, completed, ...).")
@api_options
def rollout_list(state: str | None, hub_url: str, token: str | None, as_json: bool) -> None:
    """List rollouts, newest first."""
    data = OperatorClient(hub_url, token).call("GET", "/rollouts", params={"state": state} if state else None)
    if as_json:
        emit_json(data)
        return
    table(
        ["rollout", "model", "state", "stage", "succeeded", "failed", "targets", "by", "created"],
        [
            [
                r["rollout_id"],
                model_label(r["model_name"], r["model_version"]),
                r["state"],
                f"{r['current_stage']}/{len(r['stages'])}",
                r["totals"]["succeeded"],
                r["totals"]["failed"],
                r["totals"]["size"],
                r["created_by"],
                r["created_at"],
            ]
            for r in data["items"]
        ],
    )


@rollout.command("status")
@click.argument("rollout_id")
@click.option("--watch", is_flag=True, help="Refresh until the rollout completes, pauses or ends.")
@click.option(
    "--interval",
    type=click.FloatRange(0.1),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@WATCH_TIMEOUT_OPTION
@api_options
def rollout_status(
    rollout_id: str,
    watch: bool,
    interval: float,
    watch_timeout: float | None,
    hub_url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Show a rollout's stages, progress and failures; with --watch follow it live."""
    client = OperatorClient(hub_url, token)
    if watch:
        watch_until_final(
            client,
            f"/rollouts/{rollout_id}",
            WATCH_EXIT,
            _progress_line,
            _print_rollout,
            interval=interval,
            watch_timeout=watch_timeout,
            as_json=as_json,
            for_json=_without_targets,
        )
    data = client.call("GET", f"/rollouts/{rollout_id}")
    if as_json:
        emit_json(_without_targets(data))
    else:
        _print_rollout(data)


def _without_targets(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "targets"}


def _progress_line(r: dict[str, Any]) -> str:
    t = r["totals"]
    return (
        f"{time.strftime('%H:%M:%S')} {r['rollout_id']} {r['state']:<11} stage {r['current_stage']}/"
        f"{len(r['stages'])}  succeeded {t['succeeded']}/{t['size']}  in progress {t['in_progress']}  "
        f"failed {t['failed']}  pending {t['pending']}"
    )


def _print_rollout(r: dict[str, Any]) -> None:
    pairs(
        r,
        [
            "rollout_id",
            "model_name",
            "model_version",
            "state",
            "reason",
            "target_description",
            "success_threshold",
            "error_threshold",
            "on_failure",
            "timeout_s",
            "created_by",
            "created_at",
            "finished_at",
        ],
    )
    click.echo("")
    table(
        ["stage", "percent", "agents", "succeeded", "in progress", "failed", "pending", "rolled back"],
        [
            [
                ("> " if g["stage"] == r["current_stage"] else "  ") + str(g["stage"]),
                f"{g['percent']}%",
                g["size"],
                g["succeeded"],
                g["in_progress"],
                g["failed"],
                g["pending"],
                g["rolled_back"],
            ]
            for g in r["groups"]
        ],
    )
    if r["failures"]:
        click.echo("\nfailures")
        table(
            ["agent", "stage", "state", "reason"],
            [[f["agent_id"], f["stage"], f["state"], f["detail"][:80]] for f in r["failures"]],
        )


def _rollout_action(action: str) -> click.Command:
    @click.argument("rollout_id")
    @click.option("--reason", default="", help="Why (kept in the audit log).")
    @api_options
    def command(rollout_id: str, reason: str, hub_url: str, token: str | None, as_json: bool) -> None:
        data = OperatorClient(hub_url, token).call(
            "POST", f"/rollouts/{rollout_id}/{action}", json={"reason": reason}
        )
        if as_json:
            emit_json({k: v for k, v in data.items() if k != "targets"})
            return
        click.echo(
            f"rollout {rollout_id}: {data['state']}" + (f" ({data['reason']})" if data["reason"] else "")
        )

    helps = {
        "pause": "Pause ROLLOUT_ID: no further stages start (admin).",
        "resume": "Resume a paused ROLLOUT_ID, accepting the current stage's failures (admin).",
        "abort": "Abort ROLLOUT_ID: agents not reached yet are skipped (admin).",
        "rollback": "Roll ROLLOUT_ID back: every agent it reached gets its previous model again (admin).",
    }
    command.__doc__ = helps[action]
    return rollout.command(action)(command)


for _action in ("pause", "resume", "abort", "rollback"):
    _rollout_action(_action)
