"""Operator commands that talk to the hub's REST API: ``leukonet models|agents|rollout|training ...``.

Every command takes ``--hub URL`` (env ``LEUKONET_HUB_URL``), ``--token`` (env ``LEUKONET_TOKEN``)
and ``--json`` (print the API's JSON instead of a table). Exit codes: 0 success, 1 the API
refused or could not be reached (its error message is printed), 2 usage errors;
``rollout status --watch`` ends with 0 when the rollout completed, 1 when it was rolled back or
aborted, 3 when it paused (an operator must decide), 4 when ``--timeout`` expired first;
``training watch`` ends with 0 when the job succeeded, 1 when it failed or was cancelled, 4 when
``--timeout`` expired first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar, get_args

import click
import requests

from hub.training.report import progress_text
from shared.training import JOB_STATES, TrainingJobSpec

F = TypeVar("F", bound=Callable[..., Any])
TIMEOUT_S = 30.0
WATCH_EXIT = {"completed": 0, "rolled_back": 1, "aborted": 1, "paused": 3}
WATCH_TIMEOUT_EXIT = 4
UPLOAD_TIMEOUT_S = 600.0


class HubClient:
    """A thin REST client: bearer token, JSON in and out, API errors as ClickException (exit 1)."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base = base_url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(
        self, method: str, path: str, timeout: float = TIMEOUT_S, expect_json: bool = True, **kwargs: Any
    ) -> Any:
        url = f"{self.base}/api/v1{path}"
        try:
            resp = self.session.request(method, url, timeout=timeout, **kwargs)
        except requests.RequestException as exc:
            raise click.ClickException(f"cannot reach the hub at {self.base}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                message = f"{err['message']} ({err['code']}, HTTP {resp.status_code})"
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {resp.status_code} from {method} {url}: {resp.text[:300]}"
            raise click.ClickException(message)
        if not expect_json:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise click.ClickException(
                f"{method} {url} answered {resp.status_code} without JSON; is --hub the leukonet hub?"
            ) from exc


_WATCH_TIMEOUT = click.option(
    "--timeout",
    "watch_timeout",
    type=click.FloatRange(0),
    default=None,
    help="Give up watching after this many seconds (exit 4).",
)


def api_options(fn: F) -> F:
    """Add --hub, --token and --json to a command."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")(fn)
    fn = click.option("--token", envvar="LEUKONET_TOKEN", help="API bearer token (env LEUKONET_TOKEN).")(fn)
    fn = click.option(
        "--hub",
        "hub_url",
        envvar="LEUKONET_HUB_URL",
        default="http://127.0.0.1:8080",
        show_default=True,
        help="Hub base URL (env LEUKONET_HUB_URL).",
    )(fn)
    return fn


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _pairs(data: dict[str, Any], keys: Sequence[str]) -> None:
    width = max(len(k) for k in keys)
    for k in keys:
        v = data.get(k)
        text = json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else str(v))
        click.echo(f"{k.ljust(width)}  {text}")


# --- models -----------------------------------------------------------------------------------


@click.group("models")
def models() -> None:
    """Model registry: list, show, compare, upload, delete, activate."""


@models.command("list")
@api_options
def models_list(hub_url: str, token: str | None, as_json: bool) -> None:
    """List registered model versions."""
    data = HubClient(hub_url, token).call("GET", "/models")
    if as_json:
        _emit_json(data)
        return
    _table(
        ["name", "version", "sha256", "size", "accuracy", "created"],
        [
            [
                m["name"],
                m["version"],
                m["sha256"][:12],
                m["size_bytes"],
                m.get("metrics", {}).get("accuracy"),
                m["created_at"],
            ]
            for m in data["items"]
        ],
    )


@models.command("show")
@click.argument("name")
@click.argument("version")
@api_options
def models_show(name: str, version: str, hub_url: str, token: str | None, as_json: bool) -> None:
    """Show one model version with its labels, metrics and parity."""
    data = HubClient(hub_url, token).call("GET", f"/models/{name}/{version}")
    if as_json:
        _emit_json(data)
        return
    _pairs(
        data,
        [
            "name",
            "version",
            "sha256",
            "size_bytes",
            "labels",
            "metrics",
            "parity",
            "created_at",
            "uploaded_by",
            "bundle_url",
        ],
    )


@models.command("upload")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@api_options
def models_upload(bundle: Path, hub_url: str, token: str | None, as_json: bool) -> None:
    """Upload a signed bundle zip (trainer or admin token)."""
    with bundle.open("rb") as fh:
        data = HubClient(hub_url, token).call(
            "POST",
            "/models",
            timeout=UPLOAD_TIMEOUT_S,
            files={"bundle": (bundle.name, fh, "application/zip")},
        )
    if as_json:
        _emit_json(data)
        return
    click.echo(
        f"registered {data['name']} {data['version']} (sha256 {data['sha256']}, {data['size_bytes']} bytes)"
    )


@models.command("compare")
@click.argument("name")
@click.argument("version_a")
@click.argument("version_b")
@click.option("--other-name", default=None, help="Model name of VERSION_B when it differs from NAME.")
@api_options
def models_compare(
    name: str,
    version_a: str,
    version_b: str,
    other_name: str | None,
    hub_url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Compare two versions side by side: identity, metrics and parity, with deltas (B - A)."""
    data = HubClient(hub_url, token).call(
        "GET",
        "/models/compare",
        params={"a": f"{name}/{version_a}", "b": f"{other_name or name}/{version_b}"},
    )
    if as_json:
        _emit_json(data)
        return
    a, b = data["a"], data["b"]
    rows = []
    for row in data["rows"]:
        delta = row["delta"]
        rows.append(
            [
                row["key"],
                _short(row["a"]),
                _short(row["b"]),
                "" if delta is None else f"{delta:+.4g}",
                "" if row["same"] else "*",
            ]
        )
    _table(["field", f"{a['name']} {a['version']}", f"{b['name']} {b['version']}", "delta", "diff"], rows)


@models.command("delete")
@click.argument("name")
@click.argument("version")
@api_options
def models_delete(name: str, version: str, hub_url: str, token: str | None, as_json: bool) -> None:
    """Delete a version (admin); refused while an agent runs it or a rollout involves it."""
    HubClient(hub_url, token).call("DELETE", f"/models/{name}/{version}", expect_json=False)
    if as_json:
        _emit_json({"deleted": {"name": name, "version": version}})
        return
    click.echo(f"deleted {name} {version}")


def _short(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 40 else text[:20] + "..." + text[-12:]


@models.command("activate")
@click.argument("name")
@click.argument("version")
@click.option("--agent", "agent_ids", multiple=True, required=True, help="Agent id (repeat for several).")
@api_options
def models_activate(
    name: str, version: str, agent_ids: tuple[str, ...], hub_url: str, token: str | None, as_json: bool
) -> None:
    """Set NAME VERSION as the desired model of each --agent (admin token)."""
    client = HubClient(hub_url, token)
    done: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    for agent_id in agent_ids:
        try:
            done.append(
                client.call(
                    "PUT", f"/agents/{agent_id}/desired", json={"model_name": name, "model_version": version}
                )
            )
        except click.ClickException as exc:
            failed.append((agent_id, exc.message))
    if as_json:
        _emit_json({"items": done, "errors": [{"agent_id": a, "message": m} for a, m in failed]})
    else:
        for d in done:
            click.echo(f"{d['agent_id']}: desired {d['model_name']} {d['model_version']}")
    for agent_id, message in failed:
        click.echo(f"error: {agent_id}: {message}", err=True)
    if failed:
        raise click.exceptions.Exit(1)


# --- agents -----------------------------------------------------------------------------------


@click.group("agents")
def agents() -> None:
    """Inspect agents: list, show (with model history), tag; tag labs."""


@agents.command("list")
@click.option("--tag", default=None, help="Only agents with this tag (on the agent or its lab).")
@api_options
def agents_list(tag: str | None, hub_url: str, token: str | None, as_json: bool) -> None:
    """List agents with state, running and desired model, tags, last seen."""
    data = HubClient(hub_url, token).call("GET", "/agents", params={"tag": tag} if tag else None)
    if as_json:
        _emit_json(data)
        return
    _table(
        ["agent", "lab", "state", "model", "desired", "tags", "last seen"],
        [
            [
                a["agent_id"],
                a["lab"],
                a["state"],
                _model(a["model_name"], a["model_version"]),
                _model(a["desired_model_name"], a["desired_model_version"]),
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
    data = HubClient(hub_url, token).call("PUT", f"/agents/{agent_id}/tags", json={"tags": list(tags)})
    if as_json:
        _emit_json(data)
        return
    click.echo(f"{agent_id}: tags {', '.join(data['tags']) or '(none)'}")


@agents.command("tag-lab")
@click.argument("lab")
@click.option("--tag", "tags", multiple=True, help="A tag (repeat); the set replaces the lab's tags.")
@api_options
def agents_tag_lab(lab: str, tags: tuple[str, ...], hub_url: str, token: str | None, as_json: bool) -> None:
    """Set LAB's tags (admin): every agent of the lab matches them in rollout targets."""
    data = HubClient(hub_url, token).call("PUT", f"/labs/{lab}/tags", json={"tags": list(tags)})
    if as_json:
        _emit_json(data)
        return
    click.echo(f"lab {lab} ({data['agents']} agents): tags {', '.join(data['tags']) or '(none)'}")


@agents.command("show")
@click.argument("agent_id")
@api_options
def agents_show(agent_id: str, hub_url: str, token: str | None, as_json: bool) -> None:
    """Show one agent, vitals included."""
    client = HubClient(hub_url, token)
    data = client.call("GET", f"/agents/{agent_id}")
    history = client.call("GET", f"/agents/{agent_id}/history")
    if as_json:
        _emit_json({**data, "history": history})
        return
    _pairs(
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
        _table(
            ["sent", "event", "model", "rollout", "detail"],
            [
                [
                    e["sent_at"],
                    e["event"],
                    _model(e["model_name"], e["model_version"]),
                    e["rollout_id"] or "-",
                    (e["detail"] or "")[:60],
                ]
                for e in history["events"][:20]
            ],
        )


def _model(name: str | None, version: str | None) -> str:
    return f"{name} {version}" if name else "-"


# --- rollouts ---------------------------------------------------------------------------------


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
    data = HubClient(hub_url, token).call("POST", "/rollouts", json=body)
    if as_json:
        _emit_json(data)
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
    data = HubClient(hub_url, token).call("GET", "/rollouts", params={"state": state} if state else None)
    if as_json:
        _emit_json(data)
        return
    _table(
        ["rollout", "model", "state", "stage", "succeeded", "failed", "targets", "by", "created"],
        [
            [
                r["rollout_id"],
                _model(r["model_name"], r["model_version"]),
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
@_WATCH_TIMEOUT
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
    client = HubClient(hub_url, token)
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
        _emit_json(_without_targets(data))
    else:
        _print_rollout(data)


def _without_targets(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "targets"}


Render = Callable[[dict[str, Any]], Any]


def watch_until_final(
    client: HubClient,
    path: str,
    exits: dict[str, int],
    line: Render,
    show: Render,
    *,
    interval: float,
    watch_timeout: float | None,
    as_json: bool,
    for_json: Render = lambda d: d,
) -> NoReturn:
    """Poll ``GET path`` until its ``state`` is a key of ``exits``, then exit with that code.

    Prints ``line(data)`` whenever it changes and ``show(data)`` at the end (or the final JSON
    with ``as_json``); exits :data:`WATCH_TIMEOUT_EXIT` when ``watch_timeout`` expires first.
    """
    deadline = None if watch_timeout is None else time.monotonic() + watch_timeout
    last = None
    while True:
        data = client.call("GET", path)
        final = data["state"] in exits
        if as_json:
            if final:
                _emit_json(for_json(data))
        else:
            text = line(data)
            if text != last:
                click.echo(text)
                last = text
            if final:
                show(data)
        if final:
            raise click.exceptions.Exit(exits[data["state"]])
        if deadline is not None and time.monotonic() >= deadline:
            click.echo(f"still {data['state']} after {watch_timeout:g} s; stopped watching", err=True)
            raise click.exceptions.Exit(WATCH_TIMEOUT_EXIT)
        time.sleep(interval)


def _progress_line(r: dict[str, Any]) -> str:
    t = r["totals"]
    return (
        f"{time.strftime('%H:%M:%S')} {r['rollout_id']} {r['state']:<11} stage {r['current_stage']}/"
        f"{len(r['stages'])}  succeeded {t['succeeded']}/{t['size']}  in progress {t['in_progress']}  "
        f"failed {t['failed']}  pending {t['pending']}"
    )


def _print_rollout(r: dict[str, Any]) -> None:
    _pairs(
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
    _table(
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
        _table(
            ["agent", "stage", "state", "reason"],
            [[f["agent_id"], f["stage"], f["state"], f["detail"][:80]] for f in r["failures"]],
        )


def _rollout_action(action: str) -> click.Command:
    @click.argument("rollout_id")
    @click.option("--reason", default="", help="Why (kept in the audit log).")
    @api_options
    def command(rollout_id: str, reason: str, hub_url: str, token: str | None, as_json: bool) -> None:
        data = HubClient(hub_url, token).call(
            "POST", f"/rollouts/{rollout_id}/{action}", json={"reason": reason}
        )
        if as_json:
            _emit_json({k: v for k, v in data.items() if k != "targets"})
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


# --- training jobs ----------------------------------------------------------------------------

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
    data = HubClient(hub_url, token).call("POST", "/training-jobs", json=body)
    if as_json:
        _emit_json(data)
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
    data = HubClient(hub_url, token).call("GET", "/training-jobs", params=params or None)
    if as_json:
        _emit_json(data)
        return
    _table(
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
    data = HubClient(hub_url, token).call("GET", f"/training-jobs/{job_id}")
    if as_json:
        _emit_json(data)
        return
    _print_job(data)


@training.command("cancel")
@click.argument("job_id")
@api_options
def training_cancel(job_id: str, hub_url: str, token: str | None, as_json: bool) -> None:
    """Cancel JOB_ID (admin): a queued job at once, a running one when its trainer next reports."""
    data = HubClient(hub_url, token).call("POST", f"/training-jobs/{job_id}/cancel")
    if as_json:
        _emit_json(data)
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
@_WATCH_TIMEOUT
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
        HubClient(hub_url, token),
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
    _pairs(
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
