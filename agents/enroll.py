"""``leukonet agent enroll`` and ``leukonet agent rotate-credentials``: the agent side of enrollment.

:func:`enroll` redeems a single-use enrollment token (``lke_...``) at ``POST /api/v1/enroll``
(no ``Authorization`` header; the token travels in the body with the config's ``agent_id`` and
``lab``) and stores the answer, the agent's own broker login and API token, in
``<state_dir>/credentials.json`` (:mod:`agents.credentials`). :func:`rotate` trades the current API
token for a new login and token at ``POST /api/v1/agents/self/credentials``.

Only the hub of the config's ``hub.url`` is contacted: ``--hub`` must name the same origin (the
command the hub prints carries it, so a mismatch is caught before anything is sent), and redirects
are not followed. Requests go through :class:`shared.hubclient.HubClient` (bounded timeouts, the
hub's error envelope, no retried POST).

The window of a rotation: the hub kills the old API token the moment it answers, so new credentials
that never reach the disk leave the agent locked out (re-enrollment with a new token is then the
way back). The window is kept small: ``credentials.json.next`` is created (0600) before the request,
so an unwritable state_dir fails first; SIGINT/SIGTERM wait until the answer is stored or the
request failed; the answer is written, fsynced and renamed over ``credentials.json`` at once; and a
``.next`` written completely before a crash is moved into place by the next ``rotate-credentials``
(or ``enroll``). What stays open is a crash or power loss while the answer is on the wire.
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from pydantic import ValidationError

from agents.config import AgentConfig
from agents.credentials import (
    ENROLL_HINT,
    Credentials,
    CredentialsError,
    CredentialSource,
    CredentialsWriter,
    IssuedCredentials,
    StoredCredentials,
    credentials_lock,
    credentials_path,
    next_path,
    read_credentials,
    recover_interrupted,
)
from agents.models.download import show_origin, url_origin
from shared.hubclient import HubClient, HubError

ENROLL_PATH = "/enroll"
ROTATE_PATH = "/agents/self/credentials"
TOKEN_ENV = "LEUKONET_ENROLL_TOKEN"  # noqa: S105 - the variable's name, not a secret
ENROLL_PREFIX = "lke_"
MAX_TOKEN_BYTES = 4096
_TOKEN_ID = re.compile(r"^lkn_([A-Za-z0-9]{12})_")  # the public token id (the hub lists it)


class EnrollError(RuntimeError):
    """An enrollment or rotation that did not happen (or whose result could not be stored); the
    message says why and what to do, and never carries a secret."""


@dataclass(frozen=True)
class Stored:
    """Credentials now in ``path``; ``recovered``: moved in from an interrupted earlier write."""

    credentials: StoredCredentials
    path: Path
    recovered: bool = False
    notes: tuple[str, ...] = ()


def read_token(token: str | None, token_file: Path | None) -> str:
    """The enrollment token from ``--token`` (or :data:`TOKEN_ENV`) or ``--token-file``.

    Raises:
        EnrollError: none or both given, an unreadable file, or not an enrollment token.
    """
    if token and token_file:
        raise EnrollError(f"give the enrollment token once: --token-file, or --token / {TOKEN_ENV}")
    if token_file is not None:
        try:
            with open(token_file, "rb") as fh:
                raw = fh.read(MAX_TOKEN_BYTES + 1)
        except OSError as exc:
            raise EnrollError(f"--token-file {token_file}: cannot read it ({exc.strerror})") from None
        if len(raw) > MAX_TOKEN_BYTES:
            raise EnrollError(f"--token-file {token_file}: larger than {MAX_TOKEN_BYTES} bytes, not a token")
        value = raw.decode("utf-8", "replace").strip()
        where = f"--token-file {token_file}"
    elif token:
        value, where = token.strip(), f"--token / {TOKEN_ENV}"
    else:
        raise EnrollError(
            f"no enrollment token: pass --token-file FILE or set {TOKEN_ENV} (--token TOKEN works too, "
            "but other users of this machine can see it in the process list)"
        )
    if not value.startswith(ENROLL_PREFIX) or not value.isascii() or any(c.isspace() for c in value):
        raise EnrollError(
            f"{where}: not an enrollment token (those read {ENROLL_PREFIX}..., one line, and are issued by "
            "the hub's admin); an API token (lkn_...) cannot enroll"
        )
    return value


def hub_base(config: AgentConfig, hub: str | None) -> str:
    """The base URL requests go to: the config's ``hub.url``; ``hub`` (``--hub``) must be its origin.

    Raises:
        EnrollError: ``hub.url`` or ``hub`` is not an http(s) URL with a host, or ``hub`` names
            another origin (nothing was sent).
    """
    try:
        configured = url_origin(config.hub.url)
    except ValueError as exc:
        raise EnrollError(f"hub.url: {exc}; set it to the hub's base URL (http://host:port)") from None
    if hub is not None:
        try:
            given = url_origin(hub)
        except ValueError as exc:
            raise EnrollError(f"--hub: {exc}") from None
        if given != configured:
            raise EnrollError(
                f"--hub {show_origin(given)} is not the hub of the agent config (hub.url "
                f"{show_origin(configured)}): the agent would get its credentials from one hub and use them "
                f"with another; nothing was sent. Set hub.url to {show_origin(given)} (in the config, or "
                "LEUKONET_AGENT_HUB__URL) and run again"
            )
    return config.hub.url


def enroll(config: AgentConfig, token: str, hub: str | None = None, force: bool = False) -> Stored:
    """Redeem ``token`` at the hub and store the agent's own credentials.

    Raises:
        EnrollError: refused by the hub (per status, with the hub's message), unreachable, an answer
            that is not credentials for this agent, or credentials already stored and no ``force``.
        agents.credentials.CredentialsError: the state_dir cannot take the file, or another enroll or
            rotation is running.
    """
    base = hub_base(config, hub)
    path = credentials_path(config.state_path)
    with credentials_lock(config.state_path):
        recover_interrupted(path, config.agent_id, config.hub.url)
        if path.exists() and not force:
            raise EnrollError(f"{_existing(path, config)}; nothing was sent. Use --force to replace them")
        body = {"token": token, "agent_id": config.agent_id, "lab": config.lab}
        with CredentialsWriter(path) as writer, _signals_deferred():
            try:
                resp = _post(base, ENROLL_PATH, body, config.hub.timeout_s)
            except HubError as exc:
                raise _enroll_refused(exc, config, token) from None
            stored = _credentials_of(resp, config, "enrollment", (token,))
            _commit(writer, stored, "enrollment")
    notes = []
    if stored.lab != config.lab:
        notes.append(f"the hub knows this agent's lab as {stored.lab!r}, the config says {config.lab!r}")
    if config.hub.token is not None or config.mqtt.password is not None:
        notes.append("the config's hub.token / mqtt.password are no longer used: remove them")
    return Stored(stored, path, notes=tuple(notes))


def rotate(config: AgentConfig) -> Stored:
    """Trade the stored API token for a new broker password and API token, and store them.

    Raises:
        EnrollError: not enrolled, refused by the hub, unreachable, a bad answer, or new credentials
            that could not be stored (the message says where they are, if anywhere).
        agents.credentials.CredentialsError: the stored credentials are refused, the state_dir cannot
            take the file, or another enroll or rotation is running.
    """
    path = credentials_path(config.state_path)
    with credentials_lock(config.state_path):
        recovered = recover_interrupted(path, config.agent_id, config.hub.url)
        if recovered is not None:
            return Stored(recovered, path, recovered=True)
        try:
            current, _ = read_credentials(path, config.agent_id, config.hub.url)
        except FileNotFoundError:
            raise EnrollError(
                f"{path} does not exist: this agent is not enrolled, and only an enrolled agent's own API "
                "token can rotate (config tokens cannot); enroll first with "
                "`leukonet agent enroll --config <agent.yaml> --token-file <file>`"
            ) from None
        api_token = current.api_token.get_secret_value()
        with CredentialsWriter(path) as writer, _signals_deferred():
            try:
                resp = _post(config.hub.url, ROTATE_PATH, {}, config.hub.timeout_s, api_token)
            except HubError as exc:
                raise _rotation_refused(exc, api_token) from None
            stored = _credentials_of(resp, config, "rotation", (api_token,))
            _commit(writer, stored, "rotation")
    return Stored(stored, path)


def summary(stored: Stored, config_path: Path, action: str) -> list[str]:
    """What to print after ``action`` (enrolled, rotated): what was stored (no secret) and what next."""
    c = stored.credentials
    token_id = _TOKEN_ID.match(c.api_token.get_secret_value())
    lines = [
        f"{'recovered an interrupted write' if stored.recovered else action}: agent {c.agent_id} "
        f"(lab {c.lab!r}) at the hub {c.hub}, issued {c.issued_at.isoformat()}",
        f"stored in {stored.path} (mode 0600): MQTT user {c.mqtt.username}, MQTT password, API token"
        + (f" (id {token_id.group(1)})" if token_id else "")
        + "; secrets not shown",
        *(f"note: {n}" for n in stored.notes),
        f"next: leukonet agent check --config {config_path}  (a running agent uses them from its next "
        f"MQTT reconnect and download; else: leukonet agent run --config {config_path})",
    ]
    return lines


def credentials_check(config: AgentConfig) -> tuple[Credentials | None, list[tuple[str, str]]]:
    """For ``leukonet agent check``: the credentials in use (None: refused) and (level, detail)
    lines, level ``ok``, ``FAIL`` or ``warn`` (not enrolled and no config bootstrap either)."""
    source = CredentialSource.from_config(config)
    lines: list[tuple[str, str]] = []
    creds: Credentials | None = None
    try:
        creds = source.load()
        if creds.source == "none":
            lines.append(("warn", f"{creds.describe()}; enroll with `leukonet agent enroll`"))
        else:
            lines.append(("ok", creds.describe()))
    except CredentialsError as exc:
        lines.append(("FAIL", str(exc)))
    if next_path(source.path).exists():
        lines.append(
            ("warn", f"{next_path(source.path)} is left from an interrupted write: run rotate-credentials")
        )
    return creds, lines


# --- helpers ------------------------------------------------------------------------------------


def _existing(path: Path, config: AgentConfig) -> str:
    try:
        old, _ = read_credentials(path, config.agent_id, config.hub.url)
    except CredentialsError as exc:
        return f"{path} exists but is refused ({exc})"
    except FileNotFoundError:  # removed meanwhile
        return f"{path} existed a moment ago"
    return f"this agent is already enrolled: {path} holds credentials issued {old.issued_at.isoformat()}"


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the block ends (main thread on POSIX; elsewhere a no-op)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _no_netrc(request: Any) -> Any:
    """An ``auth`` that changes nothing: requests then takes no ``~/.netrc`` login for the hub (which
    would add an Authorization header to the enrollment, or replace the bearer token)."""
    return request


def _post(base: str, path: str, body: dict[str, Any], timeout_s: float, token: str | None = None) -> Any:
    """POST ``body`` to the hub, redirects not followed; returns the response (2xx or 3xx).

    Raises:
        HubError: unreachable (status 0) or an error status.
    """
    client = HubClient(base, token=token, timeout_s=timeout_s, retries=0)
    try:
        return client.request("POST", path, json=body, allow_redirects=False, auth=_no_netrc)
    finally:
        client.session.close()


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return text


def _credentials_of(
    resp: requests.Response, config: AgentConfig, what: str, secrets: tuple[str, ...]
) -> StoredCredentials:
    """The credentials in the hub's answer to ``what``, checked to be this agent's."""
    where = f"the hub at {show_origin(url_origin(config.hub.url))}"
    if not 200 <= resp.status_code < 300:
        location = resp.headers.get("Location")
        to = f" redirecting to {_scrub(location, secrets)!r}" if location else ""
        raise EnrollError(
            f"{what} refused: {where} answered HTTP {resp.status_code}{to}; redirects are not followed, "
            "so nothing was sent elsewhere. Set hub.url to the hub's final address"
        )
    try:
        issued = IssuedCredentials.model_validate(resp.json())
    except ValueError as exc:  # JSONDecodeError and ValidationError are ValueErrors
        fields = (
            "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
            if isinstance(exc, ValidationError)
            else "not JSON"
        )
        raise EnrollError(
            f"{what}: {where} answered HTTP {resp.status_code} without valid credentials ({fields}); "
            f"nothing was stored. Is hub.url the leukonet hub? If the hub completed the {what}, the token "
            f"used is spent: {ENROLL_HINT}"
        ) from None
    if issued.agent_id != config.agent_id:
        raise EnrollError(
            f"{what}: {where} issued credentials for agent {issued.agent_id!r}, not for this config's "
            f"agent_id {config.agent_id!r}; nothing was stored"
        )
    return StoredCredentials.from_issued(issued, config.hub.url)


def _commit(writer: CredentialsWriter, stored: StoredCredentials, what: str) -> None:
    try:
        writer.commit(stored)
    except OSError as exc:
        kept = (
            f"they are in {writer.next_path}: free the disk or fix the permissions, then run "
            "`leukonet agent rotate-credentials --config <agent.yaml>` to move them into place"
            if writer.next_path.exists() and writer.next_path.stat().st_size
            else f"they are lost: {ENROLL_HINT}"
        )
        raise EnrollError(
            f"the hub completed the {what}, but the new credentials could not be stored in {writer.path} "
            f"({exc.strerror or exc}); {kept}"
        ) from None


def _hub_says(exc: HubError, secrets: tuple[str, ...]) -> str:
    return _scrub(f"the hub says: {exc.message} ({exc.code}, HTTP {exc.status})", secrets)


def _enroll_refused(exc: HubError, config: AgentConfig, token: str) -> EnrollError:
    secrets = (token,)
    if exc.status == 0:
        return EnrollError(
            f"{_scrub(exc.message, secrets)}; check hub.url and the network. Nothing was stored and the "
            "token was not used"
        )
    says = _hub_says(exc, secrets)
    if exc.status == 401:
        text = (
            f"enrollment refused: the token is unknown, already used or expired ({says}); ask the hub's "
            "admin for a new enrollment token"
        )
    elif exc.status == 403:
        text = (
            f"enrollment refused for agent {config.agent_id!r} of lab {config.lab!r}: the token is bound to "
            f"another agent id or lab, or this agent id is revoked ({says}); check agent_id and lab in the "
            "agent config, or ask the hub's admin for a token bound to this agent"
        )
    elif exc.status in (409, 422):
        text = f"the hub refused agent id {config.agent_id!r} ({says}); choose another agent_id in the config"
    elif exc.status == 429:
        text = f"the hub is throttling enrollments ({says}); wait a minute and try again"
    elif exc.status >= 500:
        text = f"the hub could not enroll the agent now ({says}); try again later"
    else:
        text = f"enrollment refused ({says})"
    return EnrollError(text + "; nothing was stored")


def _rotation_refused(exc: HubError, token: str) -> EnrollError:
    secrets = (token,)
    if exc.status == 0:
        return EnrollError(
            f"{_scrub(exc.message, secrets)}; check hub.url and the network. Nothing was changed; if the "
            f"hub rotated before the connection broke, the stored token now gets HTTP 401: {ENROLL_HINT}"
        )
    says = _hub_says(exc, secrets)
    if exc.status == 401:
        text = (
            f"rotation refused: the hub does not accept the stored API token (rotated by another process, or "
            f"revoked) ({says}); {ENROLL_HINT}"
        )
    elif exc.status == 403:
        text = (
            f"rotation refused: this agent may be revoked ({says}); ask the hub's admin, then {ENROLL_HINT}"
        )
    elif exc.status == 429:
        text = f"the hub is throttling requests ({says}); wait a minute and try again"
    elif exc.status >= 500:
        text = f"the hub could not rotate the credentials now ({says}); try again later"
    else:
        text = f"rotation refused ({says})"
    return EnrollError(text + "; the stored credentials are unchanged")
