from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import SettingsConfigDict

from shared.config import ConfigError, StrictConfig


class Mqtt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)


class DemoConfig(StrictConfig):
    model_config = SettingsConfigDict(env_prefix="LEUKONET_TEST_", extra="forbid", env_nested_delimiter="__")
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    mqtt: Mqtt = Mqtt()


def test_yaml_then_env_then_overrides(tmp_path, monkeypatch):
    f = tmp_path / "c.yaml"
    f.write_text("name: fromfile\nmqtt:\n  port: 1884\n")
    assert DemoConfig.load(f).name == "fromfile"
    monkeypatch.setenv("LEUKONET_TEST_NAME", "fromenv")
    monkeypatch.setenv("LEUKONET_TEST_MQTT__HOST", "broker")
    c = DemoConfig.load(f)
    assert (c.name, c.mqtt.host, c.mqtt.port) == ("fromenv", "broker", 1884)
    assert DemoConfig.load(f, name="override").name == "override"


def test_bad_field_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("mqtt:\n  port: 99999\n")
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        DemoConfig.load(f)
    f.write_text("nmae: typo\n")
    with pytest.raises(ConfigError, match=r"nmae: unknown field"):
        DemoConfig.load(f)


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        DemoConfig.load(tmp_path / "missing.yaml")
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        DemoConfig.load(f)
    f.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        DemoConfig.load(f)


def test_progress_logs_without_a_tty_and_draws_with_one(caplog, capsys):
    import logging

    from shared.logs import Progress

    log = logging.getLogger("progress-test")
    with caplog.at_level(logging.INFO), Progress(10, "work", log, tty=False) as p:
        for _ in range(10):
            p.update(1, loss="0.5")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress")]
    assert len(lines) == 10 and "pct=100" in lines[-1] and "loss=0.5" in lines[-1]
    with Progress(3, "bar", log, tty=True) as p:
        for _ in range(3):
            p.update(1)
    assert "3/3" in capsys.readouterr().err
