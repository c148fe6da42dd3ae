"""``leukonet trainer ...``: generate data, train, evaluate, export, bundle and publish models.

Every command logs to stderr and prints one JSON object as the **last line of stdout** (the demo
and scripts parse it). TensorFlow is imported only by the commands that need it, so ``--help``
is fast. The group callback is the composition root: it loads :class:`TrainerConfig` once.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from shared.config import ConfigError
from shared.logs import setup_logging
from trainer.config import TrainerConfig

log = logging.getLogger(__name__)


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, sort_keys=True, default=str))


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ INFO lines and Python deprecation notices drown the progress lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _fail_cleanly(fn: Callable[..., None]) -> Callable[..., None]:
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


@click.group("trainer")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML file with trainer settings (hub_url, token, signing_key, threads, log_level).",
)
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """Train, evaluate, export and publish models."""
    try:
        config = TrainerConfig.load(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    setup_logging(config.log_level)
    _quiet_tensorflow()
    ctx.obj = config


@cli.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for signing.pem (private) and signing.pub.pem (public).",
)
@_fail_cleanly
def keygen(out: Path) -> None:
    """Create an Ed25519 signing key pair (refuses to overwrite)."""
    from trainer.publish import keygen as make_keys

    private, public = make_keys(out)
    _emit({"private_key": str(private), "public_key": str(public)})


@cli.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Empty folder; images go to OUT/ALL and OUT/normal.",
)
@click.option(
    "--per-class", default=100, show_default=True, type=click.IntRange(min=1), help="Images per class."
)
@click.option(
    "--image-size",
    default=256,
    show_default=True,
    type=click.IntRange(min=64, max=2048),
    help="Image side in pixels.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed; same seed, same images.")
@_fail_cleanly
def generate(out: Path, per_class: int, image_size: int, seed: int) -> None:
    """Generate a synthetic blood-smear data set (ALL vs normal)."""
    from trainer.synthetic import generate_dataset

    ds = generate_dataset(out, per_class, image_size, seed)
    _emit({"out": str(ds.out_dir), "counts": ds.counts, "image_size": image_size, "seed": seed})


def _train_options(fn: Callable[..., None]) -> Callable[..., None]:
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


def _train_config(obj: TrainerConfig, **kw: Any) -> Any:
    from trainer.train import TrainConfig

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
        trainable_scopes=_scopes(kw["trainable_scopes"]),
        stage1_steps=kw["stage1_steps"],
        augmentations=kw["augmentations"],
        resume=kw["resume"],
    )


def _scopes(text: str | None) -> tuple[str, ...] | None:
    """``"A, B/C"`` -> ``("A", "B/C")``; ``None`` or blank -> ``None`` (every layer)."""
    scopes = tuple(x.strip() for x in (text or "").split(",") if x.strip())
    return scopes or None


@cli.command("train")
@_train_options
@click.pass_obj
@_fail_cleanly
def train_cmd(obj: TrainerConfig, **kw: Any) -> None:
    """Split the data set and train (checkpoints in WORK/checkpoints)."""
    from trainer.train import train

    result = train(_train_config(obj, **kw))
    _emit(
        {
            "checkpoint": result.checkpoint_path,
            "labels": result.labels,
            "steps": result.steps,
            "val_accuracy": result.val_accuracy,
            "elapsed_s": result.elapsed_s,
            "final_loss": result.history[-1].loss,
            "dataset_fingerprint": result.dataset_fingerprint,
        }
    )


@cli.command("import")
@click.option(
    "--data",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="ALL-IDB1 (ImNNN_L.jpg), ALL-IDB2 (ImNNN_L.tif) or one sub-folder per class.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="New folder for the TFRecord shards, labels.txt, split.json and dataset.json.",
)
@click.option(
    "--layout",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "all-idb1", "all-idb2", "folders"]),
    help="How labels are read; auto recognises ALL-IDB file names.",
)
@click.option("--val-fraction", default=0.15, show_default=True, type=float)
@click.option("--test-fraction", default=0.15, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the stratified split.")
@click.option("--shards", default=4, show_default=True, type=click.IntRange(min=1), help="Shards per split.")
@_fail_cleanly
def import_cmd(
    data: Path, out: Path, layout: str, val_fraction: float, test_fraction: float, seed: int, shards: int
) -> None:
    """Scan, split (stratified, leak-free) and convert a data set to sharded TFRecords.

    Every skipped file is listed with its reason; ALL-IDB1 mixed with ALL-IDB2 is refused.
    """
    from trainer.importer import import_dataset

    result = import_dataset(
        data,
        out,
        layout=layout,  # type: ignore[arg-type]
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        shards=shards,
    )
    _emit(result.to_json())


@cli.command("evaluate")
@click.option("--work", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--positive-label", default=None, help="Disease label for sensitivity etc. (default: ALL).")
@_fail_cleanly
def evaluate_cmd(work: Path, positive_label: str | None) -> None:
    """Evaluate the trained model on the test split (WORK/eval/report.json, predictions.csv)."""
    from trainer.pipeline import evaluate_step

    report = evaluate_step(work, positive_label)
    _emit(report.model_dump(mode="json"))


_INT8_OPTION = click.option(
    "--int8/--no-int8",
    default=False,
    show_default=True,
    help="Also quantize the FP32 IR to INT8 with NNCF (calibrated on training images) and record its "
    "accuracy delta on the test split; FP32 and FP16 stay in the bundle.",
)


@cli.command("export")
@click.option("--work", required=True, type=click.Path(file_okay=False, path_type=Path))
@_INT8_OPTION
@_fail_cleanly
def export_cmd(work: Path, int8: bool) -> None:
    """Freeze to model.pb, convert to OpenVINO IR FP32 + FP16 and check parity (WORK/export)."""
    from trainer.pipeline import export_step

    _emit(export_step(work, int8=int8))


def _signing_key(obj: TrainerConfig, given: Path | None) -> Path:
    key = given or obj.signing_key
    if key is None:
        raise click.UsageError(
            "no signing key: pass --signing-key or set LEUKONET_TRAINER_SIGNING_KEY "
            "(create one with `leukonet trainer keygen --out DIR`)"
        )
    return key


@cli.command("bundle")
@click.option("--work", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name, e.g. leukonet-all.")
@click.option("--version", required=True, help="Semantic version X.Y.Z.")
@click.option(
    "--signing-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Ed25519 private key PEM (default: config signing_key).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Bundle path (default WORK/bundle/NAME-VERSION.zip).",
)
@click.pass_obj
@_fail_cleanly
def bundle_cmd(
    obj: TrainerConfig, work: Path, name: str, version: str, signing_key: Path | None, out: Path | None
) -> None:
    """Build and sign the model bundle from the train, evaluate and export outputs."""
    from trainer.pipeline import bundle_step

    info = bundle_step(
        work, name=name, version=version, signing_key=_signing_key(obj, signing_key), out_path=out
    )
    _emit({"bundle": str(info.path), "sha256": info.sha256, "name": name, "version": version})


def _token(obj: TrainerConfig, given: str | None) -> str:
    if given:
        return given
    if obj.token is not None:
        return obj.token.get_secret_value()
    raise click.UsageError("no hub token: pass --token or set LEUKONET_TRAINER_TOKEN")


@cli.command("publish")
@click.option("--bundle", "bundle_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--hub", default=None, help="Hub base URL (default: config hub_url).")
@click.option("--token", default=None, help="Hub token (default: LEUKONET_TRAINER_TOKEN).")
@click.pass_obj
@_fail_cleanly
def publish_cmd(obj: TrainerConfig, bundle_path: Path, hub: str | None, token: str | None) -> None:
    """Upload a bundle to the hub's model registry."""
    from trainer.publish import publish

    hub_url = hub or obj.hub_url
    if not hub_url:
        raise click.UsageError("no hub URL: pass --hub or set LEUKONET_TRAINER_HUB_URL")
    _emit(publish(bundle_path, hub_url, _token(obj, token)))


@cli.command("run")
@_train_options
@click.option("--name", required=True, help="Model name, e.g. leukonet-all.")
@click.option("--version", required=True, help="Semantic version X.Y.Z.")
@click.option(
    "--signing-key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Ed25519 private key PEM (default: config signing_key).",
)
@click.option("--hub", default=None, help="Publish to this hub when given (or config hub_url).")
@click.option("--token", default=None, help="Hub token (default: LEUKONET_TRAINER_TOKEN).")
@_INT8_OPTION
@click.option("--positive-label", default=None, help="Disease label for sensitivity etc. (default: ALL).")
@click.pass_obj
@_fail_cleanly
def run_cmd(
    obj: TrainerConfig,
    name: str,
    version: str,
    signing_key: Path | None,
    hub: str | None,
    token: str | None,
    int8: bool,
    positive_label: str | None,
    **kw: Any,
) -> None:
    """Split, train, evaluate, freeze, export (+parity), bundle, and publish if a hub is given.

    The last stdout line is a JSON summary: bundle, sha256, metrics, parity, published.
    """
    from trainer.pipeline import run_pipeline

    hub_url = hub or obj.hub_url
    summary = run_pipeline(
        _train_config(obj, **kw),
        name=name,
        version=version,
        signing_key=_signing_key(obj, signing_key),
        hub_url=hub_url,
        token=_token(obj, token) if hub_url else None,
        int8=int8,
        positive_label=positive_label,
    )
    click.echo(summary.to_json())


@cli.command("serve")
@click.option("--hub", default=None, help="Hub base URL (default: config hub_url).")
@click.option("--worker", default=None, help="This trainer's name on the hub (default: the host name).")
@click.option(
    "--data-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding the data sets a job may name (default: config data_root).",
)
@click.option(
    "--checkpoint-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding pretrained checkpoints (default: config checkpoint_root).",
)
@click.option(
    "--work-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Work folders, one per job (default: config work_root).",
)
@click.option(
    "--max-jobs",
    type=click.IntRange(min=1),
    default=None,
    help="Exit after this many jobs (default: run until stopped).",
)
@click.pass_obj
@_fail_cleanly
def serve_cmd(
    obj: TrainerConfig,
    hub: str | None,
    worker: str | None,
    data_root: Path | None,
    checkpoint_root: Path | None,
    work_root: Path | None,
    max_jobs: int | None,
) -> None:
    """Run training jobs queued on the hub, one at a time, until stopped (SIGTERM / Ctrl-C).

    Each job trains in a child `leukonet trainer run`, reports progress to the hub, and publishes
    its bundle only when everything else succeeded. Needs the hub URL, a trainer token
    (LEUKONET_TRAINER_TOKEN) and a signing key.
    """
    import signal

    from trainer.service import JobError, TrainerService

    overrides = {
        k: v
        for k, v in {
            "hub_url": hub,
            "worker": worker,
            "data_root": data_root,
            "checkpoint_root": checkpoint_root,
            "work_root": work_root,
        }.items()
        if v is not None
    }
    config = TrainerConfig.model_validate({**obj.model_dump(), **overrides})
    service = TrainerService(config)

    def on_signal(signum: int, _frame: Any) -> None:
        service.stop(f"stopped ({signal.Signals(signum).name})")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        done = service.serve(max_jobs)
    except JobError as exc:  # the hub refused this trainer (token, role): a set-up error
        raise click.ClickException(str(exc)) from exc
    _emit({"jobs": done, "worker": config.worker})
