"""The per-app service container, bound to Flask ``init_app`` style.

``hub_ext`` is created once at module level but holds no state: each app gets its own
:class:`hub.services.Services` in ``app.extensions``, so two apps in one process (tests) never
share a database, publisher or token table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:
    from hub.services import Services


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
