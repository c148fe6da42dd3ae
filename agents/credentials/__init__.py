"""The agent's own credentials: its broker login and its hub API token, kept in ``credentials.json``.

``leukonet agent enroll`` writes ``<state_dir>/credentials.json`` from the hub's answer, and
``leukonet agent rotate-credentials`` replaces it (:mod:`agents.enroll`). The file is written
atomically with mode 0600 (:class:`CredentialsWriter`: ``credentials.json.next`` is created 0600,
written, fsynced and renamed over the old file) and read back strictly (:func:`read_credentials`):
at most :data:`MAX_BYTES`, no group/other access, the config's ``agent_id``, issued by the hub of
``hub.url``. Each refusal names the file and the fix.

The rest of the agent asks a :class:`CredentialSource` for the current login and token. When the
file exists, its values are used; otherwise the config's ``mqtt.username``/``mqtt.password`` and
``hub.token`` (bootstrap, or an agent set up before enrollment existed). The source re-reads the
file when it changed (inode, size, mtime or ctime), so a rotation made by another process (the CLI)
reaches the running agent without a restart: the MQTT link asks before every (re)connect, a bundle
download before every try. Which source is used is logged when it changes; secrets never are.

- :mod:`agents.credentials.model`: the hub's answer (:class:`IssuedCredentials`), the file
  (:class:`StoredCredentials`), the snapshot the agent uses (:class:`Credentials`), file names.
- :mod:`agents.credentials.files`: :func:`read_credentials`, :class:`CredentialsWriter`,
  :func:`recover_interrupted`, :func:`credentials_lock`.
- :mod:`agents.credentials.source`: :class:`CredentialSource`.

Import from here; the modules import each other directly (never this package), so there is no cycle.
"""

from agents.credentials.files import (
    CredentialsWriter,
    credentials_lock,
    read_credentials,
    recover_interrupted,
    write_credentials,
)
from agents.credentials.model import (
    ENROLL_HINT,
    FILE_NAME,
    MAX_BYTES,
    Credentials,
    CredentialsError,
    IssuedCredentials,
    MqttLogin,
    StoredCredentials,
    credentials_path,
    next_path,
)
from agents.credentials.source import CredentialSource

__all__ = [
    "ENROLL_HINT",
    "FILE_NAME",
    "MAX_BYTES",
    "CredentialSource",
    "Credentials",
    "CredentialsError",
    "CredentialsWriter",
    "IssuedCredentials",
    "MqttLogin",
    "StoredCredentials",
    "credentials_lock",
    "credentials_path",
    "next_path",
    "read_credentials",
    "recover_interrupted",
    "write_credentials",
]
