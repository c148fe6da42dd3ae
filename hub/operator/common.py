"""What every operator command shares: ``--hub/--token/--json``, the client, output, watching."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import click

from shared.hubclient import HubClient, HubError

F = TypeVar("F", bound=Callable[..., Any])
TIMEOUT_S = 30.0
WATCH_EXIT = {"completed": 0, "rolled_back": 1, "aborted": 1, "paused": 3}
WATCH_TIMEOUT_EXIT = 4
UPLOAD_TIMEOUT_S = 600.0


class OperatorClient:
    """:class:`shared.hubclient.HubClient` for commands: a refusal or an unreachable hub becomes a
    ClickException (exit 1) carrying the hub's message."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self.hub = HubClient(base_url, token, timeout_s=TIMEOUT_S)

    def call(
        self, method: str, path: str, timeout: float = TIMEOUT_S, expect_json: bool = True, **kwargs: Any
    ) -> Any:
        try:
            if not expect_json:
                self.hub.request(method, path, timeout_s=timeout, **kwargs)
                return None
            return self.hub.json(method, path, timeout_s=timeout, **kwargs)
        except HubError as exc:
            raise click.ClickException(str(exc)) from exc


def model_label(name: str | None, version: str | None) -> str:
    """``name version``, or ``-`` when there is no model."""
    return f"{name} {version}" if name else "-"


WATCH_TIMEOUT_OPTION = click.option(
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


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def pairs(data: dict[str, Any], keys: Sequence[str]) -> None:
    width = max(len(k) for k in keys)
    for k in keys:
        v = data.get(k)
        text = json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else str(v))
        click.echo(f"{k.ljust(width)}  {text}")


# --- models -----------------------------------------------------------------------------------


Render = Callable[[dict[str, Any]], Any]


def watch_until_final(
    client: OperatorClient,
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
                emit_json(for_json(data))
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
