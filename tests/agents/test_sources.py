"""The source registry: sources built by type from the config, and a source that stops the agent."""

import logging
import shutil
import threading

import pytest

from agents.config import AgentConfig
from agents.daemon import build_agent
from agents.sources import SOURCES, Halt, SourceContext, create_source
from tests.agents.helpers import make_bundle, make_keys


@pytest.fixture(scope="module")
def keys_and_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sources")
    keys = make_keys(folder)
    return keys, make_bundle(folder, keys, "1.0.0")[0]


def config(tmp_path, keys, **overrides):
    values = {
        "agent_id": "src-1",
        "watch_dir": tmp_path / "in",
        "state_dir": tmp_path / "state",
        "backend": "fake",
        "model_public_key": keys.public,
        "poll_interval_s": 0.02,
    }
    return AgentConfig.load(None, **(values | overrides))


def test_the_config_sections_choose_the_sources(tmp_path, keys_and_bundle):
    keys, _ = keys_and_bundle
    plain = build_agent(config(tmp_path / "a", keys), connect=False)
    assert list(plain.sources) == ["folder"]
    assert plain.config.watch_dir.is_dir() and plain.config.failed_path.is_dir()
    plain.close()
    every = build_agent(
        config(tmp_path / "b", keys, http={"enabled": True, "port": 0}, camera={"enabled": True}),
        connect=False,
    )
    assert list(every.sources) == ["folder", "http", "camera"] == list(SOURCES)
    every.close()


def test_an_unknown_source_type_is_refused_with_the_known_ones(tmp_path, keys_and_bundle):
    keys, _ = keys_and_bundle
    agent = build_agent(config(tmp_path, keys), connect=False)
    ctx = SourceContext(agent.config, agent.pipeline, agent.models, agent.outbox, Halt())
    try:
        with pytest.raises(
            ValueError, match=r"unknown image source 'dicom'; known sources: camera, folder, http"
        ):
            create_source("dicom", ctx)
        assert create_source("http", ctx) is None  # not enabled in this config
    finally:
        agent.close()


def test_a_vanished_watch_folder_stops_the_agent_with_its_error(tmp_path, keys_and_bundle, caplog):
    keys, bundle = keys_and_bundle
    caplog.set_level(logging.INFO, logger="agents")
    cfg = config(tmp_path, keys, initial_model=bundle)
    agent = build_agent(cfg, connect=False)
    stop, ready = threading.Event(), threading.Event()
    raised: list[BaseException] = []

    def run():
        try:
            agent.run(stop, ready.set)
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        shutil.rmtree(cfg.watch_dir)
        thread.join(30)
        assert not thread.is_alive(), "the agent kept running without its watch folder"
    finally:
        stop.set()
        thread.join(30)
    assert len(raised) == 1 and isinstance(raised[0], FileNotFoundError)
    assert str(cfg.watch_dir) in str(raised[0])
    assert "folder_source_failed" in caplog.text and "agent_stopped" in caplog.text
