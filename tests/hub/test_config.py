"""HubConfig: defaults, environment overrides, and errors that name the field."""

from __future__ import annotations

import pytest

from hub.config import HubConfig
from hub.roles import Role
from shared.config import ConfigError

FROM_ENV = "from-env-0123456789abcdef0123456789"  # secret_key needs at least 32 characters


def test_defaults_and_sqlite_in_data_dir(tmp_path):
    cfg = HubConfig.load(None, data_dir=tmp_path / "d")
    assert cfg.db_url == f"sqlite:///{(tmp_path / 'd' / 'hub.db').resolve()}"
    assert (cfg.host, cfg.port, cfg.public_url, cfg.max_upload_mb) == (
        "127.0.0.1",
        8080,
        "http://127.0.0.1:8080",
        512,
    )
    assert cfg.broker.embedded is False and cfg.mqtt.share_group is None
    with pytest.raises(ConfigError, match="secret_key"):
        cfg.require_secret_key()


def test_yaml_and_env_overrides(tmp_path, monkeypatch):
    f = tmp_path / "hub.yaml"
    f.write_text(
        "public_url: https://hub.example/\ntokens:\n"
        "  - {name: ci, token: abcdefghijklmnopqrstuvwxyz, role: trainer}\nmqtt: {port: 1884}\n"
    )
    monkeypatch.setenv("LEUKONET_HUB_MQTT__HOST", "broker.lan")
    monkeypatch.setenv("LEUKONET_HUB_SECRET_KEY", FROM_ENV)
    cfg = HubConfig.load(f)
    assert cfg.public_url == "https://hub.example"
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("broker.lan", 1884)
    assert cfg.tokens[0].role is Role.TRAINER
    assert cfg.require_secret_key() == FROM_ENV
    assert "abcdefghijklmnop" not in repr(cfg)  # secrets never print


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("tokens:\n  - {name: a, token: tooshort, role: admin}\n", "tokens.0.token"),
        ("tokens:\n  - {name: a, token: abcdefghijklmnopq, role: root}\n", "tokens.0.role"),
        (
            "tokens:\n  - {name: a, token: abcdefghijklmnopq, role: admin}\n"
            "  - {name: a, token: qrstuvwxyzabcdefg, role: agent}\n",
            "names must be unique",
        ),
        ("broker: {embeded: true}\n", "broker.embeded: unknown field"),
        ("ingest: {batch_size: 0}\n", "ingest.batch_size"),
        ("public_url: hub.example\n", "public_url"),
    ],
)
def test_invalid_config_names_the_field(tmp_path, yaml_text, message):
    f = tmp_path / "hub.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        HubConfig.load(f)


def test_rollout_defaults_are_validated(tmp_path):
    assert HubConfig.load(None, rollouts={"default_stages": [5, 100]}).rollouts.default_stages == [5, 100]
    for bad in ([50, 20, 100], [10, 50], [0, 100]):
        with pytest.raises(ConfigError, match="default_stages"):
            HubConfig.load(None, rollouts={"default_stages": bad})
    with pytest.raises(ConfigError, match="tick_s"):
        HubConfig.load(None, rollouts={"tick_s": 0})


def test_a_refused_secret_is_not_echoed_in_the_error(tmp_path):
    """A secret that fails validation (too short, a placeholder) is named, never printed: the error
    goes to the terminal and the logs."""
    from shared.config import ConfigError

    secret = "short-but-real-9f"
    with pytest.raises(ConfigError) as err:
        HubConfig.load(None, data_dir=tmp_path, secret_key=secret, database_url="postgresql://u:pw@db/x?x=")
    text = str(err.value)
    assert "secret_key" in text and "value hidden" in text
    assert secret not in text
