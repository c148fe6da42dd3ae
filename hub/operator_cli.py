"""Operator commands that talk to the hub's REST API: ``leukonet models ...`` and ``leukonet agents ...``.

Every command takes ``--hub URL`` (env ``LEUKONET_HUB_URL``), ``--token`` (env ``LEUKONET_TOKEN``)
and ``--json`` (print the API's JSON instead of a table). Exit codes: 0 success, 1 the API
refused or could not be reached (its error message is printed), 2 usage errors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import requests

F = TypeVar("F", bound=Callable[..., Any])
TIMEOUT_S = 30.0
UPLOAD_TIMEOUT_S = 600.0


class HubClient:
    """A thin REST client: bearer token, JSON in and out, API errors as ClickException (exit 1)."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base = base_url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, timeout: float = TIMEOUT_S, **kwargs: Any) -> Any:
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
        return resp.json()


def api_options(fn: F) -> F:
    """Add --hub, --token and --json to a command."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")(fn)
    fn = click.option("--token", envvar="LEUKONET_TOKEN", help="API bearer token (env LEUKONET_TOKEN).")(fn)
    fn = click.option("--hub", "hub_url", envvar="LEUKONET_HUB_URL", default="http://127.0.0.1:8080",
                      show_default=True, help="Hub base URL (env LEUKONET_HUB_URL).")(fn)
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
    """Model registry: list, show, upload, activate."""


@models.command("list")
@api_options
def models_list(hub_url: str, token: str | None, as_json: bool) -> None:
    """List registered model versions."""
    data = HubClient(hub_url, token).call("GET", "/models")
    if as_json:
        _emit_json(data)
        return
    _table(["name", "version", "sha256", "size", "accuracy", "created"],
           [[m["name"], m["version"], m["sha256"][:12], m["size_bytes"], m.get("metrics", {}).get("accuracy"),
             m["created_at"]] for m in data["items"]])


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
    _pairs(data, ["name", "version", "sha256", "size_bytes", "labels", "metrics", "parity", "created_at",
                  "uploaded_by", "bundle_url"])


@models.command("upload")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@api_options
def models_upload(bundle: Path, hub_url: str, token: str | None, as_json: bool) -> None:
    """Upload a signed bundle zip (trainer or admin token)."""
    with bundle.open("rb") as fh:
        data = HubClient(hub_url, token).call("POST", "/models", timeout=UPLOAD_TIMEOUT_S,
                                              files={"bundle": (bundle.name, fh, "application/zip")})
    if as_json:
        _emit_json(data)
        return
    click.echo(f"registered {data['name']} {data['version']} "
               f"(sha256 {data['sha256']}, {data['size_bytes']} bytes)")


@models.command("activate")
@click.argument("name")
@click.argument("version")
@click.option("--agent", "agent_ids", multiple=True, required=True, help="Agent id (repeat for several).")
@api_options
def models_activate(name: str, version: str, agent_ids: tuple[str, ...], hub_url: str, token: str | None,
                    as_json: bool) -> None:
    """Set NAME VERSION as the desired model of each --agent (admin token)."""
    client = HubClient(hub_url, token)
    done: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    for agent_id in agent_ids:
        try:
            done.append(client.call("PUT", f"/agents/{agent_id}/desired",
                                    json={"model_name": name, "model_version": version}))
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
    """Inspect agents: list, show."""


@agents.command("list")
@api_options
def agents_list(hub_url: str, token: str | None, as_json: bool) -> None:
    """List agents with state, running and desired model, last seen."""
    data = HubClient(hub_url, token).call("GET", "/agents")
    if as_json:
        _emit_json(data)
        return
    _table(["agent", "lab", "state", "model", "desired", "last seen"],
           [[a["agent_id"], a["lab"], a["state"], _model(a["model_name"], a["model_version"]),
             _model(a["desired_model_name"], a["desired_model_version"]), a["last_seen"] or "never"]
            for a in data["items"]])


@agents.command("show")
@click.argument("agent_id")
@api_options
def agents_show(agent_id: str, hub_url: str, token: str | None, as_json: bool) -> None:
    """Show one agent, vitals included."""
    data = HubClient(hub_url, token).call("GET", f"/agents/{agent_id}")
    if as_json:
        _emit_json(data)
        return
    _pairs(data, ["agent_id", "lab", "state", "model_name", "model_version", "desired_model_name",
                  "desired_model_version", "device", "last_seen", "vitals"])


def _model(name: str | None, version: str | None) -> str:
    return f"{name} {version}" if name else "-"
