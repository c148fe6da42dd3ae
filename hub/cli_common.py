"""What every ``leukonet hub`` command shares: the ``--config`` option and loading the config."""

from __future__ import annotations

from pathlib import Path

import click

from hub.config import HubConfig
from shared.config import ConfigError
from shared.logs import setup_logging

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="LEUKONET_HUB_CONFIG",
    help="Hub config YAML (env LEUKONET_HUB_CONFIG); LEUKONET_HUB_* variables override it.",
)


def load_config(path: Path | None) -> HubConfig:
    """Load and validate the config, turning a ConfigError into a clean CLI error (exit 1)."""
    try:
        config: HubConfig = HubConfig.load(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    setup_logging(config.log_level)
    return config
