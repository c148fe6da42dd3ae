"""Model registry commands: ``leukonet models list|show|upload|compare|delete|activate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hub.operator.common import (
    UPLOAD_TIMEOUT_S,
    OperatorClient,
    api_options,
    emit_json,
    pairs,
    table,
)


@click.group("models")
def models() -> None:
    """Model registry: list, show, compare, upload, delete, activate."""


@models.command("list")
@api_options
def models_list(hub_url: str, token: str | None, as_json: bool) -> None:
    """List registered model versions."""
    data = OperatorClient(hub_url, token).call("GET", "/models")
    if as_json:
        emit_json(data)
        return
    table(
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
    data = OperatorClient(hub_url, token).call("GET", f"/models/{name}/{version}")
    if as_json:
        emit_json(data)
        return
    pairs(
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
        data = OperatorClient(hub_url, token).call(
            "POST",
            "/models",
            timeout=UPLOAD_TIMEOUT_S,
            files={"bundle": (bundle.name, fh, "application/zip")},
        )
    if as_json:
        emit_json(data)
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
    data = OperatorClient(hub_url, token).call(
        "GET",
        "/models/compare",
        params={"a": f"{name}/{version_a}", "b": f"{other_name or name}/{version_b}"},
    )
    if as_json:
        emit_json(data)
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
    table(["field", f"{a['name']} {a['version']}", f"{b['name']} {b['version']}", "delta", "diff"], rows)


@models.command("delete")
@click.argument("name")
@click.argument("version")
@api_options
def models_delete(name: str, version: str, hub_url: str, token: str | None, as_json: bool) -> None:
    """Delete a version (admin); refused while an agent runs it or a rollout involves it."""
    OperatorClient(hub_url, token).call("DELETE", f"/models/{name}/{version}", expect_json=False)
    if as_json:
        emit_json({"deleted": {"name": name, "version": version}})
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
    client = OperatorClient(hub_url, token)
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
        emit_json({"items": done, "errors": [{"agent_id": a, "message": m} for a, m in failed]})
    else:
        for d in done:
            click.echo(f"{d['agent_id']}: desired {d['model_name']} {d['model_version']}")
    for agent_id, message in failed:
        click.echo(f"error: {agent_id}: {message}", err=True)
    if failed:
        raise click.exceptions.Exit(1)


# --- agents -----------------------------------------------------------------------------------
