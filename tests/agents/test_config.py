from pathlib import Path

import pytest

from agents.config import AgentConfig, effective_precision
from shared.config import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.yaml"
    p.write_text(text)
    return p


def test_defaults_derive_from_watch_dir_and_agent_id(tmp_path):
    cfg = AgentConfig.load(write(tmp_path, f"agent_id: lab-1\nwatch_dir: {tmp_path / 'in'}\n"))
    assert cfg.done_path == tmp_path / "in" / "done"
    assert cfg.failed_path == tmp_path / "in" / "failed"
    assert cfg.state_path == Path("var") / "agent-lab-1"
    assert (cfg.device, cfg.effective_precision(), cfg.low_confidence_threshold) == ("AUTO", "FP32", 0.8)


def test_missing_required_fields_are_named(tmp_path):
    with pytest.raises(ConfigError) as err:
        AgentConfig.load(write(tmp_path, "lab: x\n"))
    assert "agent_id" in str(err.value) and "watch_dir" in str(err.value)


@pytest.mark.parametrize(
    ("yaml", "field"),
    [
        ("agent_id: 'bad/id'\n", "agent_id"),
        ("agent_id: a\nbackend: tensorrt\n", "backend"),
        ("agent_id: a\nmqtt:\n  port: 70000\n", "mqtt.port"),
        ("agent_id: a\nhub:\n  url: ftp://hub\n", "hub.url"),
        ("agent_id: a\nprecision: INT4\n", "precision"),
        ("agent_id: a\nlow_confidence_threshold: 1.5\n", "low_confidence_threshold"),
        ("agent_id: a\nmqtt:\n  hots: x\n", "mqtt.hots"),
    ],
)
def test_invalid_field_is_named(tmp_path, yaml, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        AgentConfig.load(write(tmp_path, yaml + f"watch_dir: {tmp_path}\n"))


def test_done_dir_must_differ_from_watch_dir(tmp_path):
    with pytest.raises(ConfigError, match="done_dir and failed_dir must differ"):
        AgentConfig.load(write(tmp_path, f"agent_id: a\nwatch_dir: {tmp_path}\ndone_dir: {tmp_path}\n"))


def test_environment_overrides_file_and_secrets_stay_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKONET_AGENT_MQTT__HOST", "broker.lab")
    monkeypatch.setenv("LEUKONET_AGENT_HUB__TOKEN", "s3cret")
    cfg = AgentConfig.load(write(tmp_path, f"agent_id: a\nwatch_dir: {tmp_path}\nmqtt:\n  host: other\n"))
    assert cfg.mqtt.host == "broker.lab"
    assert cfg.hub.token is not None and cfg.hub.token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg)


def test_auto_precision_is_fp16_only_for_myriad():
    assert effective_precision("auto", "MYRIAD") == "FP16"
    assert effective_precision("auto", "AUTO:MYRIAD,CPU") == "FP16"
    assert effective_precision("auto", "GPU") == "FP32"
    assert effective_precision("FP16", "CPU") == "FP16"


def test_int8_and_bf16_are_used_only_when_asked():
    assert effective_precision("INT8", "CPU") == "INT8"
    assert effective_precision("BF16", "CPU") == "BF16"
    assert effective_precision("INT8", "AUTO:GPU,CPU") == "INT8"
    devices = ("CPU", "GPU", "NPU", "AUTO", "MYRIAD")
    assert {effective_precision("auto", d) for d in devices} == {"FP32", "FP16"}


@pytest.mark.parametrize("precision", ["INT8", "BF16"])
@pytest.mark.parametrize("device", ["MYRIAD", "AUTO:MYRIAD,CPU", "myriad"])
def test_int8_and_bf16_on_myriad_are_refused_at_load_naming_the_field(tmp_path, device, precision):
    text = f"agent_id: a\nwatch_dir: {tmp_path}\ndevice: '{device}'\nprecision: {precision}\n"
    with pytest.raises(ConfigError, match=r"precision: .*the NCS2 runs FP16 only"):
        AgentConfig.load(write(tmp_path, text))
    with pytest.raises(ValueError, match="the NCS2 runs FP16 only"):
        effective_precision(precision, device)


def test_int8_config_loads_for_other_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("LEUKONET_AGENT_PRECISION", "INT8")
    cfg = AgentConfig.load(write(tmp_path, f"agent_id: a\nwatch_dir: {tmp_path}\ndevice: CPU\n"))
    assert (cfg.precision, cfg.effective_precision()) == ("INT8", "INT8")
