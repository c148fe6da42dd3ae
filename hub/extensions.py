"""The per-app service container, bound to Flask ``init_app`` style.

``hub_ext`` is created once at module level but holds no state: each app gets its own
:class:`Services` in ``app.extensions``, so two apps in one process (tests) never share a database,
publisher or token table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:
    from hub.auth import TokenAuth
    from hub.config import HubConfig
    from hub.db.session import Database
    from hub.ingest.stats import IngestStats
    from hub.mqtt.publisher import MqttPublisher
    from hub.registry.service import ModelRegistry
    from hub.rollouts.engine import RolloutEngine
    from hub.training.service import TrainingJobs


@dataclass
class Services:
    """Everything request handlers need, built by :func:`hub.app.create_app`."""

    config: HubConfig
    db: Database
    auth: TokenAuth
    registry: ModelRegistry
    publisher: MqttPublisher
    rollouts: RolloutEngine
    training: TrainingJobs
    ingest_stats: IngestStats | None
    owns_db: bool = True
    owns_publisher: bool = True


class HubExtension:
    """Binds :class:`Services` to an app and finds them again for the current request."""

    key = "leukonet"

    def init_app(self, app: Flask, services: Services) -> None:
        app.extensions[self.key] = services

    @property
    def services(self) -> Services:
        services: Services = current_app.extensions[self.key]
        return services

    def for_app(self, app: Flask) -> Services:
        services: Services = app.extensions[self.key]
        return services


hub_ext = HubExtension()
