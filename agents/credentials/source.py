"""Where the running agent gets its credentials from: :class:`CredentialSource` (see
:mod:`agents.credentials`)."""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from agents.config import AgentConfig
from agents.credentials.files import FileKey, file_key, read_credentials
from agents.credentials.model import (
    Credentials,
    CredentialsError,
    Source,
    StoredCredentials,
    credentials_path,
)
from shared.logs import kv

log = logging.getLogger(__name__)


def _from_file(stored: StoredCredentials, path: Path) -> Credentials:
    return Credentials(
        source="file",
        mqtt_username=stored.mqtt.username,
        mqtt_password=stored.mqtt.password.get_secret_value(),
        api_token=stored.api_token.get_secret_value(),
        issued_at=stored.issued_at,
        path=path,
    )


class CredentialSource:
    """The agent's current credentials: ``credentials.json`` when it exists, else the config's.

    Thread-safe. :meth:`load` is strict (start-up, the CLI); :meth:`current` never raises (the MQTT
    network thread and the download worker call it): when the file turns bad while the agent runs,
    the error is logged once and the last good credentials stay in use.

    Args:
        path: the credentials file (:func:`credentials_path`).
        agent_id: the config's agent id; a file for another agent is refused.
        hub_url: the config's ``hub.url``; a file issued by another hub is refused.
        bootstrap: what to use while there is no file (the config's login and token).
    """

    def __init__(self, path: Path, agent_id: str, hub_url: str, bootstrap: Credentials) -> None:
        self.path = path
        self._agent_id = agent_id
        self._hub_url = hub_url
        self._bootstrap = bootstrap
        self._lock = threading.Lock()
        self._cached: Credentials | None = None
        self._cached_key: FileKey | None = None
        self._failed: object = None  # the file state (or error) last logged as refused
        self._announced: tuple[Source, datetime | None] | None = None

    @classmethod
    def from_config(cls, config: AgentConfig) -> CredentialSource:
        """The source for ``config``: its state_dir's file, its ``mqtt`` login and ``hub.token``."""
        username = config.mqtt.username or None
        password = config.mqtt.password.get_secret_value() if config.mqtt.password else None
        token = config.hub.token.get_secret_value() if config.hub.token else None
        source: Source = "config" if (username or token) else "none"
        bootstrap = Credentials(source, username, password, token)
        return cls(credentials_path(config.state_path), config.agent_id, config.hub.url, bootstrap)

    def load(self) -> Credentials:
        """The current credentials, re-read when the file changed.

        Raises:
            CredentialsError: the file exists but is refused (see :func:`read_credentials`).
        """
        with self._lock:
            return self._refresh()

    def current(self) -> Credentials:
        """As :meth:`load`, but a refused file is logged (once) and the last good credentials are kept."""
        with self._lock:
            try:
                return self._refresh()
            except CredentialsError as exc:
                try:
                    marker: object = self._stat_key() or str(exc)
                except CredentialsError:
                    marker = str(exc)
                if marker != self._failed:
                    self._failed = marker
                    log.error(
                        kv("credentials_refused", error=exc, action="keeping the last good credentials")
                    )
                return self._cached or self._bootstrap

    def api_token(self) -> str | None:
        """The bearer token for the hub now (None: neither enrolled nor ``hub.token``)."""
        return self.current().api_token

    def mqtt_login(self) -> tuple[str | None, str | None]:
        """(username, password) for the broker now; (None, None) connects anonymously."""
        creds = self.current()
        return creds.mqtt_username, creds.mqtt_password

    def _stat_key(self) -> FileKey | None:
        try:
            return file_key(os.stat(self.path))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CredentialsError(f"credentials file {self.path}: cannot stat it ({exc.strerror})") from None

    def _refresh(self) -> Credentials:
        key = self._stat_key()
        if self._cached is not None and key == self._cached_key:
            return self._cached
        if key is None:
            creds, key_read = self._bootstrap, None
        else:
            try:
                stored, key_read = read_credentials(self.path, self._agent_id, self._hub_url)
                creds = _from_file(stored, self.path)
            except FileNotFoundError:  # removed between stat and open
                creds, key_read = self._bootstrap, None
        self._cached, self._cached_key, self._failed = creds, key_read, None
        self._announce(creds)
        return creds

    def _announce(self, creds: Credentials) -> None:
        marker = (creds.source, creds.issued_at)
        if marker == self._announced:
            return
        self._announced = marker
        level = logging.WARNING if creds.source == "none" else logging.INFO
        fields: dict[str, Any] = {"source": creds.source, "detail": creds.describe()}
        if creds.source == "file" and (self._bootstrap.api_token or self._bootstrap.mqtt_password):
            fields["note"] = "the config's hub.token / mqtt.password are ignored while the file exists"
        log.log(level, kv("credentials_source", **fields))
