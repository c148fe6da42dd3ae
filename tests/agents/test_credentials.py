"""The agent's own credentials on disk and in use: ``credentials.json`` is written atomically with
mode 0600 and read back strictly (group/other access, another agent's or another hub's file, a
corrupt file are refused with the fix); the file wins over the config's bootstrap login and token;
a rotation by another process reaches the running agent: the MQTT link logs in with the new password
at its next reconnect, and bundle downloads send the new token."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from agents.cli import cli
from agents.config import AgentConfig, MqttConfig
from agents.credentials import (
    CredentialsError,
    CredentialSource,
    MqttLogin,
    StoredCredentials,
    credentials_path,
    next_path,
    read_credentials,
    write_credentials,
)
from agents.daemon import build_agent
from agents.link import Link
from agents.models import BundleDownloader, ModelError
from agents.outbox import Outbox
from shared.logs import parse_kv
from shared.schemas import AgentStatus, DesiredModel
from tests.agents.helpers import bundle_server, make_bundle, make_keys, wait_until

HUB = "http://127.0.0.1:8080"
T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def agent_config(tmp_path, agent_id="a1", hub=HUB, token="bootstrap-token", **extra) -> AgentConfig:
    values = {
        "agent_id": agent_id,
        "lab": "haem",
        "watch_dir": tmp_path / "in",
        "state_dir": tmp_path / "state",
        "backend": "fake",
        "device": "CPU",
        "hub": {"url": hub, **({"token": token} if token else {})},
        "mqtt": {"username": "bootstrap-user", "password": "bootstrap-pw"} if token else {},
        **extra,
    }
    return AgentConfig.load(None, **values)


def creds(
    n: int = 1, agent_id: str = "a1", hub: str = HUB, issued: datetime | None = None
) -> StoredCredentials:
    return StoredCredentials(
        agent_id=agent_id,
        lab="haem",
        mqtt=MqttLogin(username=agent_id, password=f"mqtt-password-{n:04d}"),
        api_token=f"lkn_AAAAAAAAAAA{n % 10}_api-secret-{n:04d}",
        issued_at=issued or T0 + timedelta(hours=n),
        hub=hub,
    )


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the file -----------------------------------------------------------------------------------


def test_the_file_is_written_0600_and_reads_back(tmp_path):
    path = credentials_path(tmp_path)
    old_umask = os.umask(0)  # a permissive umask must not leak into the file's mode
    try:
        write_credentials(path, creds(1))
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    assert not next_path(path).exists()
    back, _ = read_credentials(path, "a1", HUB)
    assert back == creds(1)
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1 and data["hub"] == HUB
    assert data["mqtt"]["password"] == "mqtt-password-0001"  # the file is where the secrets are


def test_replacing_is_atomic_a_reader_sees_the_old_or_the_new_file(tmp_path):
    path = credentials_path(tmp_path)
    write_credentials(path, creds(1))
    seen: set[str] = set()
    errors: list[Exception] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                seen.add(read_credentials(path, "a1", HUB)[0].mqtt.password.get_secret_value())
            except Exception as exc:  # noqa: BLE001 - any error is a torn read
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(2, 150):
            write_credentials(path, creds(n))
    finally:
        done.set()
        thread.join(10)
    assert errors == []
    assert len(seen) > 1 and all(p.startswith("mqtt-password-") for p in seen)
    assert read_credentials(path, "a1", HUB)[0] == creds(149) and mode(path) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_part(tmp_path, monkeypatch):
    path = credentials_path(tmp_path)
    write_credentials(path, creds(1))

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("agents.credentials.files.os.fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        write_credentials(path, creds(2))
    monkeypatch.undo()
    assert read_credentials(path, "a1", HUB)[0] == creds(1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credentials.json"]


@pytest.mark.parametrize("bad_mode", [0o644, 0o640, 0o604, 0o660])
def test_a_file_open_to_group_or_others_is_refused(tmp_path, bad_mode):
    path = credentials_path(tmp_path)
    write_credentials(path, creds(1))
    path.chmod(bad_mode)
    with pytest.raises(CredentialsError) as err:
        read_credentials(path, "a1", HUB)
    assert str(path) in str(err.value) and f"chmod 600 {path}" in str(err.value)
    assert f"mode {bad_mode:04o}" in str(err.value)
    path.chmod(0o600)
    assert read_credentials(path, "a1", HUB)[0] == creds(1)


def test_another_agents_file_is_refused(tmp_path):
    path = credentials_path(tmp_path)
    write_credentials(path, creds(1, agent_id="other-scope"))
    with pytest.raises(
        CredentialsError, match="belongs to agent 'other-scope', not to this config's agent_id 'a1'"
    ):
        read_credentials(path, "a1", HUB)


def test_a_file_from_another_hub_is_refused(tmp_path):
    path = credentials_path(tmp_path)
    write_credentials(path, creds(1, hub="https://hub.elsewhere:443"))
    with pytest.raises(
        CredentialsError, match="issued by the hub at https://hub.elsewhere:443, but hub.url is"
    ):
        read_credentials(path, "a1", HUB)
    # the same origin spelled differently is the same hub
    assert read_credentials(path, "a1", "HTTPS://Hub.Elsewhere/")[0].agent_id == "a1"


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b'{"schema_version": 1, "agent_id": "a1"',  # truncated
        b"[]",
        b"",
        # a secret that fails validation must not be echoed
        json.dumps(
            {**json.loads(creds(1).file_bytes()), "api_token": "lkn_with a space-SECRETVALUE"}
        ).encode(),
        json.dumps({**json.loads(creds(1).file_bytes()), "extra": 1}).encode(),
        b" " * 20_000,  # too large
    ],
)
def test_a_corrupt_file_is_refused_naming_it_and_the_fix(tmp_path, content):
    path = credentials_path(tmp_path)
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(CredentialsError) as err:
        read_credentials(path, "a1", HUB)
    text = str(err.value)
    assert str(path) in text and "leukonet agent enroll" in text and "--force" in text
    assert "SECRETVALUE" not in text and "mqtt-password" not in text


# --- the source -----------------------------------------------------------------------------------


def test_the_file_wins_over_the_config_and_the_source_is_logged_once(tmp_path, caplog):
    config = agent_config(tmp_path)
    source = CredentialSource.from_config(config)
    with caplog.at_level(logging.INFO, logger="agents.credentials.source"):
        assert source.load().source == "config"
        assert source.mqtt_login() == ("bootstrap-user", "bootstrap-pw")
        assert source.api_token() == "bootstrap-token"
        write_credentials(source.path, creds(1))
        for _ in range(3):
            assert source.mqtt_login() == ("a1", "mqtt-password-0001")
            assert source.api_token() == "lkn_AAAAAAAAAAA1_api-secret-0001"
    records = [r for r in caplog.records if r.name == "agents.credentials.source"]
    logged = [parse_kv(r.getMessage()) for r in records]
    sources = [f["source"] for e, f in logged if e == "credentials_source"]
    assert sources == ["config", "file"]
    assert "ignored while the file exists" in logged[-1][1]["note"]
    for secret in ("api-secret-0001", "mqtt-password-0001", "bootstrap-pw", "bootstrap-token"):
        assert all(secret not in r.getMessage() for r in records)


def test_without_file_or_config_there_are_no_credentials(tmp_path, caplog):
    source = CredentialSource.from_config(agent_config(tmp_path, token=None))
    with caplog.at_level(logging.WARNING, logger="agents.credentials.source"):
        got = source.load()
    assert (got.source, got.api_token, got.mqtt_username) == ("none", None, None)
    assert "credentials_source source=none" in caplog.text


def test_a_rotation_by_another_process_is_picked_up(tmp_path):
    source = CredentialSource.from_config(agent_config(tmp_path))
    write_credentials(source.path, creds(1))
    assert source.mqtt_login()[1] == "mqtt-password-0001"
    # same size, same agent: only the secrets and the time differ
    write_credentials(source.path, creds(2))
    assert source.mqtt_login()[1] == "mqtt-password-0002"
    assert source.api_token() == "lkn_AAAAAAAAAAA2_api-secret-0002"
    source.path.unlink()  # removed: back to the config's bootstrap
    assert source.current().source == "config"


def test_a_file_that_turns_bad_keeps_the_last_good_credentials_at_runtime(tmp_path, caplog):
    source = CredentialSource.from_config(agent_config(tmp_path))
    write_credentials(source.path, creds(1))
    assert source.api_token() == "lkn_AAAAAAAAAAA1_api-secret-0001"
    source.path.chmod(0o644)
    with caplog.at_level(logging.ERROR, logger="agents.credentials.source"):
        for _ in range(3):
            assert source.api_token() == "lkn_AAAAAAAAAAA1_api-secret-0001"
    refused = [r.getMessage().split()[0] for r in caplog.records if r.levelno >= logging.ERROR]
    assert refused == ["credentials_refused"]  # once, not on every call
    with pytest.raises(CredentialsError, match="chmod 600"):
        source.load()


def test_the_agent_refuses_to_start_with_a_refused_file(tmp_path):
    config = agent_config(tmp_path)
    path = credentials_path(config.state_path)
    write_credentials(path, creds(1, agent_id="someone-else"))
    with pytest.raises(CredentialsError, match="belongs to agent 'someone-else'"):
        build_agent(config)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"agent_id: a1\nwatch_dir: {tmp_path}/in\nstate_dir: {config.state_path}\nbackend: fake\n")
    res = CliRunner().invoke(cli, ["run", "--config", str(cfg)])
    assert res.exit_code == 1 and "belongs to agent 'someone-else'" in res.output


# --- bundle downloads -------------------------------------------------------------------------------


def desired(url: str, sha: str) -> DesiredModel:
    return DesiredModel(
        agent_id="a1",
        model_name="m",
        model_version="1.0.0",
        bundle_url=url,
        bundle_sha256=sha,
        rollout_id="r",
    )


@pytest.mark.parametrize("rotated", [True, False])
def test_a_download_retries_a_401_only_when_the_token_was_rotated_meanwhile(tmp_path, rotated):
    import hashlib

    body = b"bundle bytes"
    sha = hashlib.sha256(body).hexdigest()
    calls: list[str] = []

    def token() -> str:
        calls.append("asked")
        # asked before the download, for the first try's header, then after its 401
        return "new-token" if rotated and len(calls) > 2 else "old-token"

    with bundle_server({"/b": body}, "new-token") as (hub, seen):
        dl = BundleDownloader(tmp_path, token, 5, 3, 0.0, threading.Event(), hub)
        if rotated:
            assert dl.download(desired(f"{hub}/b", sha)).read_bytes() == body
            assert seen == ["/b", "/b"]
        else:
            with pytest.raises(ModelError, match="HTTP 401"):
                dl.download(desired(f"{hub}/b", sha))
            assert seen == ["/b"]  # a refused token is not tried again


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles")
    keys = make_keys(folder)
    return keys, make_bundle(folder, keys, "1.0.0"), make_bundle(folder, keys, "2.0.0", flip=True)


def test_the_agent_downloads_with_the_enrolled_token_not_the_config_one(tmp_path, bundles):
    keys, (v1, _), (v2, sha2) = bundles
    with bundle_server({"/b": v2.read_bytes()}, "lkn_AAAAAAAAAAA1_api-secret-0001") as (hub, seen):
        config = agent_config(tmp_path, hub=hub, model_public_key=keys.public)
        write_credentials(credentials_path(config.state_path), creds(1, hub=hub))
        agent = build_agent(config, connect=False)
        try:
            agent.models.install_bundle(v1)
            d = desired(f"{hub}/b", sha2).model_copy(
                update={"model_name": "leukonet-tiny", "model_version": "2.0.0"}
            )
            assert agent.models.apply(d) is True
        finally:
            agent.models.close()
            agent.outbox.close()
    assert seen == ["/b"]


# --- the MQTT link ----------------------------------------------------------------------------------


class FakeBroker:
    """A loopback MQTT 3.1.1 listener that records each CONNECT's (username, password) and answers
    CONNACK accepted when the password is in ``accepted``, else 5 (not authorized), as a broker with
    per-client passwords does. :meth:`drop` closes every connection, so clients reconnect."""

    def __init__(self, accepted: set[str]) -> None:
        self.accepted = accepted
        self.logins: list[tuple[str | None, str | None]] = []
        self._conns: list[socket.socket] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    def _packet(self, conn: socket.socket) -> tuple[int, bytes]:
        first = self._read(conn, 1)[0]
        length, shift = 0, 0
        while True:
            byte = self._read(conn, 1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        return first, self._read(conn, length)

    def _serve(self, conn: socket.socket) -> None:
        try:
            first, body = self._packet(conn)
            assert first >> 4 == 1, "first packet must be CONNECT"
            i = 0

            def s16() -> bytes:
                nonlocal i
                n = int.from_bytes(body[i : i + 2], "big")
                i += 2 + n
                return body[i - n : i]

            s16()  # protocol name
            flags = body[i + 1]
            i += 4  # level, flags, keepalive
            s16()  # client id
            if flags & 0x04:
                s16(), s16()  # will topic and message
            user = s16().decode() if flags & 0x80 else None
            password = s16().decode() if flags & 0x40 else None
            self.logins.append((user, password))
            ok = password in self.accepted
            conn.sendall(bytes([0x20, 2, 0, 0 if ok else 5]))
            while ok:
                self._packet(conn)  # SUBSCRIBE, PUBLISH, ...: read and ignored
        except OSError:
            pass
        finally:
            conn.close()

    def drop(self) -> None:
        for conn in self._conns:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._sock.close()
        self.drop()


@contextmanager
def fake_broker(accepted: set[str]) -> Iterator[FakeBroker]:
    broker = FakeBroker(accepted)
    try:
        yield broker
    finally:
        broker.close()


def test_the_link_logs_in_with_a_rotated_password_at_its_next_reconnect(tmp_path):
    config = agent_config(tmp_path)
    source = CredentialSource.from_config(config)
    write_credentials(source.path, creds(1))
    with fake_broker({"mqtt-password-0001"}) as broker:
        mqtt = MqttConfig(host="127.0.0.1", port=broker.port, reconnect_min_s=1, reconnect_max_s=1)
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        link = Link(
            "a1",
            mqtt,
            outbox,
            lambda state: AgentStatus(agent_id="a1", state=state),
            lambda d: None,
            mqtt_login=source.mqtt_login,
        )
        link.start()
        try:
            assert link.wait_connected(10)
            assert broker.logins == [("a1", "mqtt-password-0001")]
            # another process rotates: the hub now accepts only the new password
            write_credentials(source.path, creds(2))
            broker.accepted = {"mqtt-password-0002"}
            assert link.connected  # the session that is up keeps running
            broker.drop()
            wait_until(lambda: link.connected and len(broker.logins) >= 2, timeout=15)
            assert broker.logins[1:] == [("a1", "mqtt-password-0002")]
        finally:
            link.stop()
            outbox.close()


def test_without_a_credential_source_the_link_keeps_the_configs_login(tmp_path):
    with fake_broker({"cfg-pw"}) as broker:
        mqtt = MqttConfig(
            host="127.0.0.1", port=broker.port, username="cfg-user", password="cfg-pw", reconnect_min_s=1
        )
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        link = Link("a1", mqtt, outbox, lambda state: AgentStatus(agent_id="a1", state=state), lambda d: None)
        link.start()
        try:
            assert link.wait_connected(10)
            broker.drop()
            wait_until(lambda: len(broker.logins) >= 2 and link.connected, timeout=15)
            assert set(broker.logins) == {("cfg-user", "cfg-pw")}
        finally:
            link.stop()
            outbox.close()


def test_a_refused_login_is_retried_with_the_credentials_rotated_meanwhile(tmp_path):
    config = agent_config(tmp_path)
    source = CredentialSource.from_config(config)
    write_credentials(source.path, creds(1))
    with fake_broker({"mqtt-password-0002"}) as broker:  # the broker knows only the rotated password
        mqtt = MqttConfig(host="127.0.0.1", port=broker.port, reconnect_min_s=1, reconnect_max_s=1)
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        link = Link(
            "a1",
            mqtt,
            outbox,
            lambda state: AgentStatus(agent_id="a1", state=state),
            lambda d: None,
            mqtt_login=source.mqtt_login,
        )
        link.start()
        try:
            wait_until(lambda: broker.logins, timeout=10)
            assert not link.connected and broker.logins[0] == ("a1", "mqtt-password-0001")
            write_credentials(source.path, creds(2))
            assert link.wait_connected(15)
            assert broker.logins[-1] == ("a1", "mqtt-password-0002")
        finally:
            link.stop()
            outbox.close()
