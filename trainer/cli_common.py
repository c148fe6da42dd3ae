"""What the ``leukonet trainer`` commands share: JSON output, clean errors and common options.

:mod:`trainer.cli` defines the command group and its commands with these; nothing here imports
TensorFlow.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from trainer.config import TrainerConfig
from trainer.train_config import TrainConfig


def emit(data: Any) -> None:
    """Print ``data`` as one JSON line on stdout (the last line scripts parse)."""
    click.echo(json.dumps(data, sort_keys=True, default=str))


def fail_cleanly(fn: Callable[..., None]) -> Callable[..., None]:
    """Turn the errors a user can cause into a one-line ``Error: ...`` and exit status 1.

    ValueError covers DatasetError, BundleError, ConfigError and pydantic's ValidationError;
    ParityError and PublishError say what the IR or the hub got wrong. Anything else keeps its
    traceback: it is a bug, not a usage error.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from trainer.export import ParityError
        from trainer.publish import PublishError

        try:
            fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, FileExistsError, ParityError, PublishError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


INT8_OPTION = click.option(
    "--int8/--no-int8",
    default=False,
    show_default=True,
    help="Also quantize the FP32 IR to INT8 with NNCF (calibrated on training images) and record its "
    "accuracy delta on the test split; FP32 and FP16 stay in the bundle.",
)


def train_options(fn: Callable[..., None]) -> Callable[..., None]:
    """Add the training options (``--data``, ``--work``, ``--steps``, ...) of ``train`` and ``run``;
    :func:`train_config_from_options` turns their values into a :class:`TrainConfig`."""
    options = [
        click.option(
            "--data",
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="An import folder (`leukonet trainer import`: trains on its split and TFRecords) "
            "or an image folder with one sub-folder per class.",
        ),
        click.option(
            "--work",
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="Work folder for the split, checkpoints, evaluation, export and bundle.",
        ),
        click.option("--network", default="inception_v3", show_default=True, help="Network family."),
        click.option("--image-size", default=299, show_default=True, type=int, help="Network input size."),
        click.option(
            "--depth-multiplier",
            default=1.0,
            show_default=True,
            type=float,
            help="Inception channel width multiplier (0.25-0.35 trains in minutes on a CPU).",
        ),
        click.option("--steps", default=1000, show_default=True, type=int, help="Training steps."),
        click.option("--batch-size", default=16, show_default=True, type=int, help="Images per step."),
        click.option("--learning-rate", default=1e-3, show_default=True, type=float),
        click.option(
            "--seed",
            default=0,
            show_default=True,
            type=int,
            help="Seed of split, initialisation and augmentation.",
        ),
        click.option(
            "--class-weighting",
            default="balanced",
            show_default=True,
            type=click.Choice(["balanced", "none"]),
        ),
        click.option(
            "--mode",
            default="auto",
            show_default=True,
            type=click.Choice(["auto", "scratch", "finetune", "bottleneck"]),
            help="auto: bottleneck with --checkpoint, scratch without.",
        ),
        click.option(
            "--checkpoint",
            default=None,
            type=click.Path(path_type=Path),
            help="Pretrained checkpoint prefix, e.g. /models/inception_v3.ckpt (slim 2016-08-28).",
        ),
        click.option(
            "--trainable-scopes",
            default=None,
            help="finetune stage 2: comma-separated scopes to train (default: all layers).",
        ),
        click.option(
            "--stage1-steps",
            default=None,
            type=click.IntRange(min=0),
            help="finetune: steps training only the new heads (default: half of --steps).",
        ),
        click.option(
            "--augmentations",
            default=4,
            show_default=True,
            type=click.IntRange(1, 64),
            help="bottleneck: cached augmented copies per training image.",
        ),
        click.option(
            "--resume/--no-resume",
            default=False,
            show_default=True,
            help="Continue from the latest checkpoint in WORK/checkpoints.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def train_config_from_options(obj: TrainerConfig, **kw: Any) -> TrainConfig:
    """The run's :class:`TrainConfig` from :func:`train_options`' values and the trainer's threads.

    Raises:
        ValidationError: a value is out of range or the options contradict each other.
    """
    return TrainConfig(
        data_dir=kw["data"],
        work_dir=kw["work"],
        network=kw["network"],
        image_size=kw["image_size"],
        depth_multiplier=kw["depth_multiplier"],
        steps=kw["steps"],
        batch_size=kw["batch_size"],
        learning_rate=kw["learning_rate"],
        seed=kw["seed"],
        class_weighting=kw["class_weighting"],
        threads=obj.threads,
        mode=kw["mode"],
        checkpoint=kw["checkpoint"],
        trainable_scopes=parse_scopes(kw["trainable_scopes"]),
        stage1_steps=kw["stage1_steps"],
        augmentations=kw["augmentations"],
        resume=kw["resume"],
    )


def parse_scopes(text: str | None) -> tuple[str, ...] | None:
    """``"A, B/C"`` -> ``("A", "B/C")``; ``None`` or blank -> ``None`` (every layer)."""
    scopes = tuple(x.strip() for x in (text or "").split(",") if x.strip())
    return scopes or None


def require_signing_key(obj: TrainerConfig, given: Path | None) -> Path:
    """``--signing-key``, else the config's ``signing_key``; neither: a usage error (exit 2)."""
    key = given or obj.signing_key
    if key is None:
        raise click.UsageError(
            "no signing key: pass --signing-key or set LEUKONET_TRAINER_SIGNING_KEY "
            "(create one with `leukonet trainer keygen --out DIR`)"
        )
    return key


def require_token(obj: TrainerConfig, given: str | None) -> str:
    """``--token``, else the config's ``token``; neither: a usage error (exit 2)."""
    if given:
        return given
    if obj.token is not None:
        return obj.token.get_secret_value()
    raise click.UsageError("no hub token: pass --token or set LEUKONET_TRAINER_TOKEN")
