"""Training and service configuration: strict, with errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config import ConfigError
from trainer.config import TrainerConfig
from trainer.nets import get_network
from trainer.train_common import make_optimizer
from trainer.train_config import TrainConfig


def test_train_config_defaults_and_manifest_view(tmp_path: Path) -> None:
    cfg = TrainConfig(data_dir=tmp_path / "d", work_dir=tmp_path / "w")
    assert (cfg.mode, cfg.network) == ("scratch", "inception_v3")
    assert (cfg.image_size, cfg.depth_multiplier) == (299, 1.0)
    view = cfg.for_manifest()
    assert "data_dir" not in view and "work_dir" not in view and view["steps"] == cfg.steps


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("mode", "finetune", "mode"),
        ("network", "resnet_50", "unknown network 'resnet_50'"),
        ("image_size", 64, "image_size"),
        ("depth_multiplier", 0, "depth_multiplier"),
        ("bogus", 1, "bogus"),
        ("optimizer", "sgd", "optimizer"),
    ],
)
def test_train_config_rejects_bad_values(tmp_path: Path, field: str, value: object, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        TrainConfig(data_dir=tmp_path, work_dir=tmp_path, **{field: value})


def test_unknown_optimizer_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; choose one of adam, momentum, rmsprop"):
        make_optimizer("sgd", 0.1)


def test_service_config_reads_the_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEUKONET_TRAINER_TOKEN", "s3cr3t-value")
    monkeypatch.setenv("LEUKONET_TRAINER_HUB_URL", "http://hub:8080")
    cfg = TrainerConfig.load()
    assert cfg.token is not None and cfg.token.get_secret_value() == "s3cr3t-value"
    assert cfg.hub_url == "http://hub:8080" and "s3cr3t-value" not in repr(cfg)
    with pytest.raises(ConfigError, match="hub_ur"):
        TrainerConfig.load(hub_ur="x")


def test_network_registry_fails_loudly() -> None:
    spec = get_network("inception_v3")
    assert spec.default_image_size == 299 and "InceptionV3/Logits" in spec.logits_scopes
    with pytest.raises(ValueError, match="unknown network 'vgg'; known networks: inception_v3"):
        get_network("vgg")
    with pytest.raises(ValueError, match="too small for inception_v3"):
        spec.check_image_size(60)
