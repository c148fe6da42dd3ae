"""A desired model is trusted only within bounds: bundles come from the hub's origin only (no token
goes elsewhere), the signed manifest must be the version desired, and a lower version needs
``rollback: true``. Each refusal is a ``failed`` event and the current model keeps running."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from agents.backends import create_backend
from agents.config import AgentConfig
from agents.daemon import build_agent
from agents.models import ModelManager, url_origin
from shared.logs import parse_kv
from shared.schemas import DesiredModel, ModelEvent, ModelEventKind
from shared.topics import Kind, build
from tests.agents.helpers import Recorder, bundle_server, make_bundle, make_keys
from tests.conftest import serve_in_thread

TOKEN = "agent-token"
NAME = "leukonet-tiny"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles")
    keys = make_keys(folder)
    return keys, make_bundle(folder, keys, "1.0.0"), make_bundle(folder, keys, "2.0.0", flip=True)


def manager(state_dir, keys, events, hub_url: str | None) -> ModelManager:
    return ModelManager(
        agent_id="a1",
        state_dir=state_dir,
        make_backend=lambda: create_backend("fake"),
        public_key_path=keys.public,
        hub_token=TOKEN,
        hub_url=hub_url,
        publish_event=events.append,
        download_attempts=3,
        retry_backoff_s=0.0,
    )


def desired(url: str, sha: str, version: str, name: str = NAME, rollback: bool = False) -> DesiredModel:
    return DesiredModel(
        agent_id="a1",
        model_name=name,
        model_version=version,
        bundle_url=url,
        bundle_sha256=sha,
        rollout_id="r1",
        rollback=rollback,
    )


def state_of(state_dir) -> dict[str, Any]:
    return json.loads((state_dir / "active.json").read_text())


def host_port(url: str) -> str:
    return url.removeprefix("http://")


@contextmanager
def redirecting_server(location: str) -> Iterator[tuple[str, list[str]]]:
    """Answers every GET with ``302 Location: <location>``; yields (base url, paths seen)."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (stdlib name)
            seen.append(self.path)
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
            return

    with serve_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        yield url, seen


def test_origins_compare_normalised():
    assert url_origin("HTTP://Hub.Lab:80/api/x") == url_origin("http://hub.lab") == ("http", "hub.lab", 80)
    assert (
        url_origin("https://HUB.lab:443/a?b") == url_origin("https://hub.lab/") == ("https", "hub.lab", 443)
    )
    assert url_origin("http://[::1]:8080/b") == ("http", "::1", 8080)
    assert url_origin("http://hub.lab:8080") != url_origin("https://hub.lab:8080")
    assert url_origin("http://hub.lab:8080") != url_origin("http://hub.lab:8081")
    for bad in ("ftp://hub.lab/x", "/api/v1/models/x", "http:///x", "http://hub.lab:99999/x"):
        with pytest.raises(ValueError, match="not an absolute|invalid port"):
            url_origin(bad)


@pytest.mark.parametrize(
    "forged",
    [
        "{attacker}/b",  # another port on the same host
        "http://{attacker_hp}\\@{hub_hp}/b",  # urllib reads host {hub}, requests would dial {attacker}
        "http://user@{hub_hp}/b",  # a user name before the hub's host
        "https://{hub_hp}/b",  # another scheme
        "ftp://{hub_hp}/b",
    ],
)
def test_a_foreign_bundle_url_is_refused_before_any_request(tmp_path, bundles, caplog, forged):
    keys, (v1, _), (v2, sha2) = bundles
    events: list[ModelEvent] = []
    files = {"/b": v2.read_bytes()}
    with bundle_server(files, TOKEN) as (hub, hub_seen), bundle_server(files, TOKEN) as (attacker, stolen):
        mm = manager(tmp_path, keys, events, hub_url=hub)
        mm.install_bundle(v1)
        url = forged.format(attacker=attacker, attacker_hp=host_port(attacker), hub_hp=host_port(hub))
        with caplog.at_level(logging.WARNING, logger="agents.models.manager"):
            forged_desired = desired(url, sha2, "2.0.0")
            assert mm.apply(forged_desired) is False
            assert mm.apply(forged_desired) is False  # delivered again (retained): not reported again
    assert stolen == [] and hub_seen == []  # no request at all: the token went nowhere
    failed = [e for e in events if e.event is ModelEventKind.FAILED]
    assert len(failed) == 1 and [e.event for e in events].count(ModelEventKind.DOWNLOADING) == 0
    assert failed[0].model_version == "2.0.0" and failed[0].rollout_id == "r1"
    assert "bundle_url" in failed[0].detail and f"the hub at http://{host_port(hub)}" in failed[0].detail
    if forged == "{attacker}/b":
        assert f"is on http://{host_port(attacker)}, not on the hub at http://{host_port(hub)}" in (
            failed[0].detail
        )
        assert "the hub token was not sent" in failed[0].detail
    logged = [parse_kv(r.getMessage()) for r in caplog.records]
    assert [f["reason"] for e, f in logged if e == "desired_refused"] == ["foreign_origin"]
    assert mm.active is not None and mm.active.version == "1.0.0"
    assert state_of(tmp_path)["current"]["version"] == "1.0.0"
    mm.close()


def test_a_hub_origin_written_differently_is_the_hub(tmp_path, bundles):
    keys, (v1, _), (v2, sha2) = bundles
    events: list[ModelEvent] = []
    with bundle_server({"/b": v2.read_bytes()}, TOKEN) as (hub, seen):
        mm = manager(tmp_path, keys, events, hub_url=f"{hub}/")
        mm.install_bundle(v1)
        assert mm.apply(desired(f"HTTP://{host_port(hub)}/b", sha2, "2.0.0")) is True
    assert seen == ["/b"] and events[-1].event is ModelEventKind.ACTIVATED
    mm.close()


def test_a_redirect_away_from_the_hub_is_not_followed(tmp_path, bundles):
    keys, (v1, _), (v2, sha2) = bundles
    events: list[ModelEvent] = []
    with (
        bundle_server({"/b": v2.read_bytes()}, TOKEN) as (attacker, stolen),
        redirecting_server(f"{attacker}/b") as (hub, seen),
    ):
        mm = manager(tmp_path, keys, events, hub_url=hub)
        mm.install_bundle(v1)
        assert mm.apply(desired(f"{hub}/b", sha2, "2.0.0")) is False
    assert seen == ["/b"] and stolen == []
    assert events[-1].event is ModelEventKind.FAILED
    assert "HTTP 302 redirecting to" in events[-1].detail and attacker in events[-1].detail
    assert mm.active is not None and mm.active.version == "1.0.0"
    mm.close()


def test_without_a_hub_url_nothing_is_downloaded(tmp_path, bundles):
    keys, (v1, _), (v2, sha2) = bundles
    events: list[ModelEvent] = []
    with bundle_server({"/b": v2.read_bytes()}, TOKEN) as (url, seen):
        mm = manager(tmp_path, keys, events, hub_url=None)
        mm.install_bundle(v1)
        assert mm.apply(desired(f"{url}/b", sha2, "2.0.0")) is False
    assert seen == []
    assert events[-1].event is ModelEventKind.FAILED and "no hub URL" in events[-1].detail
    mm.close()


@pytest.mark.parametrize(("name", "version"), [(NAME, "3.0.0"), ("leukonet-large", "1.0.0")])
def test_a_bundle_that_is_not_the_desired_version_is_refused(tmp_path, bundles, caplog, name, version):
    keys, (v1, sha1), (v2, _) = bundles
    events: list[ModelEvent] = []
    # the hub serves the properly signed 1.0.0 under the name of another version
    with bundle_server({"/b": v1.read_bytes()}, TOKEN) as (hub, seen):
        mm = manager(tmp_path, keys, events, hub_url=hub)
        mm.install_bundle(v2)
        with caplog.at_level(logging.WARNING, logger="agents.models.manager"):
            assert mm.apply(desired(f"{hub}/b", sha1, version, name=name)) is False
    assert seen == ["/b"]
    assert [e.event.value for e in events[-3:]] == ["downloading", "verifying", "failed"]
    assert events[-1].detail.startswith(
        f"the bundle's signed manifest is {NAME} 1.0.0, but the desired state names {name} {version}: "
        "refused, nothing installed"
    )
    logged = [parse_kv(r.getMessage()) for r in caplog.records]
    assert [f["reason"] for e, f in logged if e == "desired_refused"] == ["identity_mismatch"]
    assert mm.active is not None and mm.active.version == "2.0.0"
    assert state_of(tmp_path)["current"]["version"] == "2.0.0"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [f"{NAME}-2.0.0"]
    assert list((tmp_path / "downloads").iterdir()) == []
    mm.close()


@pytest.mark.parametrize("lower", ["1.0.0", "2.0.0-rc.1", "1.10.0"])
def test_a_downgrade_needs_the_rollback_flag(tmp_path, bundles, lower):
    keys, (v1, sha1), (v2, _) = bundles
    events: list[ModelEvent] = []
    with bundle_server({"/b": v1.read_bytes()}, TOKEN) as (hub, seen):
        mm = manager(tmp_path, keys, events, hub_url=hub)
        mm.install_bundle(v2)
        assert mm.apply(desired(f"{hub}/b", sha1, lower)) is False
        assert seen == []  # refused before downloading
        assert events[-1].event is ModelEventKind.FAILED
        assert events[-1].detail.startswith(
            f"desired {NAME} {lower} is lower than the running {NAME} 2.0.0 and the desired state is "
            "not marked as a rollback: refused, the current model keeps running"
        )
        assert mm.active is not None and mm.active.version == "2.0.0"
        if lower == "1.0.0":
            assert mm.apply(desired(f"{hub}/b", sha1, lower, rollback=True)) is True
            assert seen == ["/b"]
            assert [e.event.value for e in events[-3:]] == ["downloading", "verifying", "activated"]
            assert mm.active.version == "1.0.0"
            assert state_of(tmp_path)["previous"]["version"] == "2.0.0"
    mm.close()


def test_a_forged_retained_desired_on_the_broker_is_refused(tmp_path, private_broker, bundles):
    """End to end: a broker login publishes a desired pointing elsewhere; the agent says why, via MQTT."""
    keys, (v1, _), (v2, sha2) = bundles
    agent_id = "trust-1"
    files = {"/b": v2.read_bytes()}
    with bundle_server(files, TOKEN) as (hub, hub_seen), bundle_server(files, TOKEN) as (attacker, stolen):
        cfg = AgentConfig.load(
            None,
            agent_id=agent_id,
            watch_dir=tmp_path / "in",
            state_dir=tmp_path / "state",
            backend="fake",
            device="CPU",
            mqtt={"host": private_broker.host, "port": private_broker.port, "reconnect_max_s": 1},
            hub={"url": hub, "token": TOKEN},
            model_public_key=keys.public,
            initial_model=v1,
            status_interval_s=0.3,
        )
        rec = Recorder(private_broker.host, private_broker.port, f"leukonet/v1/agents/{agent_id}/events")
        agent = build_agent(cfg)
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        try:
            forged = desired(f"{attacker}/b", sha2, "2.0.0").model_copy(update={"agent_id": agent_id})
            rec.client.publish(build(agent_id, Kind.DESIRED), forged.to_json(), qos=1, retain=True)

            def failures() -> list[ModelEvent]:
                evs = [ModelEvent.model_validate_json(p) for p in rec.payloads("/events")]
                return [e for e in evs if e.event is ModelEventKind.FAILED]

            assert rec.wait_for(lambda _m: bool(failures()))
            assert f"not on the hub at http://{host_port(hub)}" in failures()[0].detail
            assert stolen == [] and hub_seen == []
            assert agent.models.active is not None and agent.models.active.version == "1.0.0"
        finally:
            stop.set()
            thread.join(30)
            rec.client.publish(build(agent_id, Kind.DESIRED), b"", qos=1, retain=True).wait_for_publish(5)
            rec.stop()
    assert not thread.is_alive()
