"""Training-job commands: ``leukonet training queue|list|show|cancel|watch``."""

from __future__ import annotations

import time
from typing import Any, get_args

import click

from hub.operator.common import (
    WATCH_TIMEOUT_OPTION,
    OperatorClient,
    api_options,
    emit_json,
    pairs,
    table,
    watch_until_final,
)
from hub.training.report import progress_text
from shared.training import JOB_STATES, TrainingJobSpec

JOB_WATCH_EXIT = {"succeeded": 0, "failed": 1, "cancelled": 1}
JOB_FIELDS = TrainingJobSpec.model_fields


def _spec_help(field: str) -> str:
    info = JOB_FIELDS[field]
    default = "" if info.is_required() or info.default is None else f" (hub default {info.default})"
    title = info.title or field
    text = f"{title[0].upper()}{title[1:]}{default}"
    return text if text.endswith(".") else f"{text}."


@click.group("training")
def training() -> None:
    """Training jobs for `leukonet trainer serve`: queue, list, show, cancel, watch."""


@training.command("queue")
@click.option("--name", required=True, help=_spec_help("name"))
@click.option("--version", "model_version", required=True, help=_spec_help("version"))
@click.option("--dataset", required=True, help=_spec_help("dataset"))
@click.option("--mode", type=click.Choice(get_args(JOB_FIELDS["mode"].annotation)), help=_spec_help("mode"))
@click.option("--checkpoint", help=_spec_help("checkpoint"))
@click.option("--steps", type=int, help=_spec_help("steps"))
@click.option("--batch-size", type=int, help=_spec_help("batch_size"))
@click.option("--learning-rate", type=float, help=_spec_help("learning_rate"))
@click.option("--image-size", type=int, help=_spec_help("image_size"))
@click.option("--depth-multiplier", type=float, help=_spec_help("depth_multiplier"))
@click.option("--seed", type=int, help=_spec_help("seed"))
@click.option(
    "--class-weighting",
    type=click.Choice(get_args(JOB_FIELDS["class_weighting"].annotation)),
    help=_spec_help("class_weighting"),
)
@click.option("--stage1-steps", type=int, help=_spec_help("stage1_steps"))
@click.option("--augmentations", type=int, help=_spec_help("augmentations"))
@click.option("--positive-label", help=_spec_help("positive_label"))
@click.option("--trainable-scope", "trainable_scopes", multiple=True, help="Finetune stage 2 scope (repeat).")
@click.option("--int8/--no-int8", default=None, help=_spec_help("int8"))
@api_options
def training_queue(hub_url: str, token: str | None, as_json: bool, **fields: Any) -> None:
    """Queue a training job (admin); a `leukonet trainer serve` picks it up. Prints the job id."""
    body: dict[str, Any] = {"name": fields.pop("name"), "version": fields.pop("model_version")}
    scopes = fields.pop("trainable_scopes")
    body.update({k: v for k, v in fields.items() if v is not None})
    if scopes:
        body["trainable_scopes"] = list(scopes)
    data = OperatorClient(hub_url, token).call("POST", "/training-jobs", json=body)
    if as_json:
        emit_json(data)
        return
    click.echo(f"queued training job {data['job_id']}: {_job_model(data)} from {data['spec']['dataset']}")


@training.command("list")
@click.option("--state", type=click.Choice(JOB_STATES), default=None, help="Only jobs in this state.")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=None, help="At most this many (hub default 100)."
)
@api_options
def training_list(
    state: str | None, limit: int | None, hub_url: str, token: str | None, as_json: bool
) -> None:
    """List training jobs, newest first."""
    params = {k: v for k, v in (("state", state), ("limit", limit)) if v is not None}
    data = OperatorClient(hub_url, token).call("GET", "/training-jobs", params=params or None)
    if as_json:
        emit_json(data)
        return
    table(
        ["job", "state", "model", "mode", "dataset", "progress", "worker", "created"],
        [
            [
                j["job_id"],
                j["state"]
                + (" (cancel requested)" if j["cancel_requested"] and j["state"] == "running" else ""),
                _job_model(j),
                j["spec"]["mode"],
                j["spec"]["dataset"],
                progress_text(j["progress"]),
                j["worker"] or "-",
                j["created_at"],
            ]
            for j in data["items"]
        ],
    )


@training.command("show")
@click.argument("job_id")
@api_options
def training_show(job_id: str, hub_url: str, token: str | None, as_json: bool) -> None:
    """Show one training job: spec, progress, error or result."""
    data = OperatorClient(hub_url, token).call("GET", f"/training-jobs/{job_id}")
    if as_json:
        emit_json(data)
        return
    _print_job(data)


@training.command("cancel")
@click.argument("job_id")
@api_options
def training_cancel(job_id: str, hub_url: str, token: str | None, as_json: bool) -> None:
    """Cancel JOB_ID (admin): a queued job at once, a running one when its trainer next reports."""
    data = OperatorClient(hub_url, token).call("POST", f"/training-jobs/{job_id}/cancel")
    if as_json:
        emit_json(data)
        return
    if data["state"] == "cancelled":
        click.echo(f"training job {job_id}: cancelled")
    else:
        click.echo(f"training job {job_id}: cancel requested; its trainer stops at its next progress report")


@training.command("watch")
@click.argument("job_id")
@click.option(
    "--interval", type=click.FloatRange(0.1), default=2.0, show_default=True, help="Seconds between polls."
)
@WATCH_TIMEOUT_OPTION
@api_options
def training_watch(
    job_id: str,
    interval: float,
    watch_timeout: float | None,
    hub_url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Follow JOB_ID until it ends: exit 0 succeeded, 1 failed or cancelled, 4 --timeout expired."""

    def show(data: dict[str, Any]) -> None:
        click.echo("")
        _print_job(data)

    watch_until_final(
        OperatorClient(hub_url, token),
        f"/training-jobs/{job_id}",
        JOB_WATCH_EXIT,
        lambda j: f"{time.strftime('%H:%M:%S')} {_job_line(j)}",
        show,
        interval=interval,
        watch_timeout=watch_timeout,
        as_json=as_json,
    )


def _job_model(j: dict[str, Any]) -> str:
    return f"{j['spec']['name']} {j['spec']['version']}"


def _job_line(j: dict[str, Any]) -> str:
    line = f"{j['job_id'][:8]} {j['state']:<9} {_job_model(j)}"
    if j["state"] == "running":
        line += f"  {progress_text(j['progress'])}  on {j['worker']}"
        if j["cancel_requested"]:
            line += "  (cancel requested)"
    elif j["error"]:
        line += f"  {j['error']}"
    return line


def _print_job(j: dict[str, Any]) -> None:
    spec = j["spec"]
    result = j["result"] or {}
    pairs(
        {
            **j,
            "model": _job_model(j),
            "dataset": spec["dataset"],
            "mode": spec["mode"] + (f" from {spec['checkpoint']}" if spec.get("checkpoint") else ""),
            "progress": progress_text(j["progress"]),
            "sha256": result.get("sha256"),
            "metrics": result.get("metrics"),
        },
        [
            "job_id",
            "state",
            "model",
            "dataset",
            "mode",
            "progress",
            "worker",
            "cancel_requested",
            "error",
            "sha256",
            "metrics",
            "created_by",
            "created_at",
            "started_at",
            "heartbeat_at",
            "finished_at",
            "spec",
        ],
    )
