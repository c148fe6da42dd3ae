"""WSGI entry point for production: ``gunicorn -w 4 -b 0.0.0.0:8080 'hub.wsgi:app'``.

The config path comes from ``LEUKONET_HUB_CONFIG`` (plus the usual ``LEUKONET_HUB_*`` overrides).
The app is built on first access of ``app`` (module ``__getattr__``), not at import, so importing
this module has no side effects. Run ``leukonet hub migrate`` before starting gunicorn, and
``leukonet hub ingest`` as a separate process (or several with ``mqtt.share_group``).
"""

from __future__ import annotations

import os
from typing import Any

_app: Any = None


def _build() -> Any:
    from hub.app import create_app
    from hub.config import HubConfig
    from shared.logs import setup_logging

    config = HubConfig.load(os.environ.get("LEUKONET_HUB_CONFIG"))
    setup_logging(config.log_level)
    return create_app(config)


def __getattr__(name: str) -> Any:
    global _app
    if name == "app":
        if _app is None:
            _app = _build()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
