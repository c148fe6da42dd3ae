"""The ``leukonet`` console script: one group per role, loaded lazily.

``leukonet hub ...``, ``leukonet agent ...`` and ``leukonet trainer ...`` import their role's
package only when called, so an agent install (no TensorFlow, no Flask) runs ``leukonet agent``.
Operator commands (``models``, ``agents``, ``rollout``) talk to the hub's REST API.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

# command name -> "module:attribute" of a click command; imported on first use only.
_LAZY: dict[str, tuple[str, str]] = {
    "hub": ("hub.cli", "Run the hub (REST API, dashboard, MQTT ingest)."),
    "agent": ("agents.cli", "Run or check an edge agent."),
    "trainer": ("trainer.cli", "Train, evaluate, export and publish models."),
    "models": ("hub.operator.models:models", "Model registry operations (talks to the hub API)."),
    "agents": ("hub.operator.agents:agents", "Inspect agents (talks to the hub API)."),
    "rollout": ("hub.operator.rollout:rollout", "Staged model rollouts (talks to the hub API)."),
    "training": ("hub.operator.training:training", "Training jobs for `trainer serve` (hub API)."),
    "demo": ("hub.demo_cli", "Run the whole loop on one machine with embedded defaults."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_LAZY)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _LAZY:
            return None
        target = _LAZY[cmd_name][0]
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise click.ClickException(
                f"`leukonet {cmd_name}` needs extra packages that are not installed ({exc.name}); "
                f"install them with: pip install 'leukonet[{_extra_for(cmd_name)}]'"
            ) from exc
        cmd: Any = getattr(module, attr or "cli")
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, help_) in sorted(_LAZY.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _extra_for(cmd: str) -> str:
    return {"agent": "agent", "trainer": "trainer"}.get(cmd, "hub")


@click.group(cls=LazyGroup)
@click.version_option(package_name="leukonet")
def main() -> None:
    """leukonet: leukemia screening at the edge."""


if __name__ == "__main__":
    main()
