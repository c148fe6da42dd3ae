"""The dynamic security plugin's files for the embedded mosquitto: what is set up before it starts.

Finding the plugin next to the ``mosquitto`` binary; creating ``dynamic-security.json`` with the hub
as its only admin (``mosquitto_ctrl dynsec init`` when installed, else the same file written here,
with Mosquitto's PBKDF2-HMAC-SHA512 password hashes); and the hub's admin password, made once and
kept in ``<state_dir>/hub-password`` (mode 0600), put back into the config when the two disagree.
:mod:`hub.broker.embedded` runs the broker on these files; :mod:`hub.broker.dynsec` manages the
accounts in them while it runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

from shared.logs import kv

log = logging.getLogger(__name__)

HUB_USERNAME = "leukonet-hub"
DYNSEC_FILE = "dynamic-security.json"
CREDENTIAL_FILE = "hub-password"
PLUGIN_NAME = "mosquitto_dynamic_security.so"
_PLUGIN_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/arm-linux-gnueabihf",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
    "/opt/homebrew/lib",
)
# what to do without Mosquitto 2 and its plugin; hub.broker.embedded gives the same advice
INSTALL_HINT = (
    "install Mosquitto 2 (`./services.sh demo` as root, or `apt-get install mosquitto`), or set "
    "broker.implementation: amqtt for an anonymous demo broker that does not enforce identities"
)
# What `mosquitto_ctrl dynsec init` gives its admin: the control API plus reading every topic.
_ADMIN_ACLS = [
    ("publishClientSend", "$CONTROL/dynamic-security/#"),
    ("publishClientReceive", "$CONTROL/dynamic-security/#"),
    ("subscribePattern", "$CONTROL/dynamic-security/#"),
    ("publishClientReceive", "$SYS/#"),
    ("subscribePattern", "$SYS/#"),
    ("publishClientReceive", "#"),
    ("subscribePattern", "#"),
    ("unsubscribePattern", "#"),
]
_PBKDF2_ITERATIONS = 101  # what Mosquitto 2.0.11 itself writes; the hub's password is 32 random characters


class BrokerStartError(RuntimeError):
    """The embedded broker did not come up; the message says why and what to do."""


def find_dynsec_plugin(executable: str) -> Path:
    """The dynamic security plugin that goes with ``executable``.

    Raises:
        BrokerStartError: listing where it looked.
    """
    prefix = Path(executable).resolve().parent.parent
    dirs = [prefix / "lib", *sorted((prefix / "lib").glob("*-linux-gnu*")), *map(Path, _PLUGIN_DIRS)]
    for folder in dirs:
        if (folder / PLUGIN_NAME).is_file():
            return folder / PLUGIN_NAME
    raise BrokerStartError(
        f"mosquitto ({executable}) is installed but its dynamic security plugin {PLUGIN_NAME} is not in "
        f"{', '.join(dict.fromkeys(str(d) for d in dirs))}; the hub needs it to give each agent its own "
        f"login: {INSTALL_HINT}"
    )


def hash_password(password: str, salt: bytes, iterations: int = _PBKDF2_ITERATIONS) -> dict[str, Any]:
    """The ``password`` / ``salt`` / ``iterations`` fields of a dynsec client (PBKDF2-HMAC-SHA512)."""
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": iterations,
    }


def password_matches(client: dict[str, Any], password: str) -> bool:
    """True when the dynsec client entry ``client`` stores ``password``."""
    try:
        salt = base64.b64decode(client["salt"])
        expected = hash_password(password, salt, int(client["iterations"]))["password"]
    except (KeyError, ValueError, TypeError):
        return False
    return secrets.compare_digest(expected, str(client.get("password", "")))


def write_dynsec_config(path: Path, username: str, password: str) -> None:
    """A new dynsec config with one admin, as ``mosquitto_ctrl dynsec init`` writes it (mode 0600)."""
    acls = [{"acltype": t, "topic": topic, "allow": True} for t, topic in _ADMIN_ACLS]
    admin = {
        "username": username,
        "textName": "leukonet hub (dynsec admin)",
        "roles": [{"rolename": "admin"}],
    }
    config = {
        "clients": [admin | hash_password(password, secrets.token_bytes(12))],
        "roles": [{"rolename": "admin", "acls": acls}],
        # deny publish and subscribe unless a role allows them: what makes identities mean something
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
    }
    _write_private(path, json.dumps(config, indent=2))


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    path.chmod(0o600)


def init_dynsec_config(path: Path, username: str, password: str) -> None:
    """Create ``path`` with admin ``username``: ``mosquitto_ctrl dynsec init`` when installed.

    The password goes to mosquitto_ctrl on stdin, never on its command line (other local users
    can read command lines). Without mosquitto_ctrl the file is written here, in the same format.
    """
    ctrl = shutil.which("mosquitto_ctrl")
    if ctrl is None:
        write_dynsec_config(path, username, password)
        return
    done = subprocess.run(
        [ctrl, "dynsec", "init", str(path), username],
        input=f"{password}\n{password}\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0 or not path.is_file():
        raise BrokerStartError(
            f"mosquitto_ctrl dynsec init {path} failed: {(done.stdout + done.stderr)[-300:]}"
        )
    path.chmod(0o600)


def hub_credentials(state_dir: Path) -> tuple[str, str]:
    """The hub's dynsec admin login: made on first start, then read from ``state_dir``.

    The dynsec config is created when missing; when it exists but does not hold this password (the
    password file was lost), the admin's password in it is reset, which is safe while the broker
    is stopped.

    Raises:
        BrokerStartError: the config exists but is not JSON or has no user ``leukonet-hub``.
    """
    pw_file = state_dir / CREDENTIAL_FILE
    password = pw_file.read_text().strip() if pw_file.is_file() else ""
    if not password:
        password = secrets.token_urlsafe(24)
        _write_private(pw_file, password + "\n")
    config_path = state_dir / DYNSEC_FILE
    if not config_path.is_file():
        init_dynsec_config(config_path, HUB_USERNAME, password)
        log.info(kv("broker_dynsec_initialised", path=config_path, admin=HUB_USERNAME))
        return HUB_USERNAME, password
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise BrokerStartError(
            f"cannot read {config_path} ({exc}); restore it, or delete it to start afresh "
            "(agents then enroll again)"
        ) from exc
    admin = next((c for c in config.get("clients", []) if c.get("username") == HUB_USERNAME), None)
    if admin is None:
        raise BrokerStartError(
            f"{config_path} has no user {HUB_USERNAME!r}; delete the file to start afresh "
            "(agents then enroll again)"
        )
    if not password_matches(admin, password):
        admin.update(hash_password(password, secrets.token_bytes(12)))
        _write_private(config_path, json.dumps(config, indent=2))
        log.warning(
            kv("broker_hub_password_reset", path=config_path, reason="did not match " + CREDENTIAL_FILE)
        )
    return HUB_USERNAME, password
