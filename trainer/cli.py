"""``leukonet trainer ...``: generate data, train, evaluate, export, bundle and publish models.

Every command logs to stderr and prints one JSON object as the **last line of stdout** (the demo
and scripts parse it). TensorFlow is imported only by the commands that need it, so ``--help``
is fast. The group callback is the composition root: it loads :class:`TrainerConfig` once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click

from shared.config import ConfigError
from shared.logs import setup_logging
from trainer.cell_options import cell_options, cell_options_from
from trainer.cli_common import (
    INT8_OPTION,
    emit,
    fail_cleanly,
    require_signing_key,
    require_token,
    train_config_from_options,
    train_options,
)
from trainer.cli_fields import fields_cmd
from trainer.config import TrainerConfig

log = logging.getLogger(__name__)


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ INFO lines and Python deprecation notices drown the progress lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


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
@fail_cleanly
def keygen(out: Path) -> None:
    """Create an Ed25519 signing key pair (refuses to overwrite)."""
    from trainer.publish import keygen as make_keys

    private, public = make_keys(out)
    emit({"private_key": str(private), "public_key": str(public)})


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
@fail_cleanly
def generate(out: Path, per_class: int, image_size: int, seed: int) -> None:
    """Generate a synthetic blood-smear data set (ALL vs normal)."""
    from trainer.synthetic import generate_dataset

    ds = generate_dataset(out, per_class, image_size, seed)
    emit({"out": str(ds.out_dir), "counts": ds.counts, "image_size": image_size, "seed": seed})


@cli.command("train")
@train_options
@click.pass_obj
@fail_cleanly
def train_cmd(obj: TrainerConfig, **kw: Any) -> None:
    """Split the data set and train (checkpoints in WORK/checkpoints)."""
    from trainer.train import train

    result = train(train_config_from_options(obj, **kw))
    emit(
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
@fail_cleanly
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
    emit(result.to_json())


@cli.command("evaluate")
@click.option("--work", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--positive-label", default=None, help="Disease label for sensitivity etc. (default: ALL).")
@fail_cleanly
def evaluate_cmd(work: Path, positive_label: str | None) -> None:
    """Evaluate the trained model on the test split (WORK/eval/report.json, predictions.csv)."""
    from trainer.pipeline import evaluate_step

    report = evaluate_step(work, positive_label)
    emit(report.model_dump(mode="json"))


@cli.command("export")
@click.option("--work", required=True, type=click.Path(file_okay=False, path_type=Path))
@INT8_OPTION
@fail_cleanly
def export_cmd(work: Path, int8: bool) -> None:
    """Freeze to model.pb, convert to OpenVINO IR FP32 + FP16 and check parity (WORK/export)."""
    from trainer.pipeline import export_step

    emit(export_step(work, int8=int8))


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
@click.option("--positive-label", default=None, help="Cell models: the disease label (default: ALL).")
@cell_options
@click.pass_obj
@fail_cleanly
def bundle_cmd(
    obj: TrainerConfig,
    work: Path,
    name: str,
    version: str,
    signing_key: Path | None,
    out: Path | None,
    positive_label: str | None,
    **kw: Any,
) -> None:
    """Build and sign the model bundle from the train, evaluate and export outputs.

    With --cells, the model is bundled as a cell model, evaluated on --eval-fields first.
    """
    from trainer.pipeline import bundle_step

    cells = cell_options_from(positive_label, kw)
    key = require_signing_key(obj, signing_key)
    info = bundle_step(work, name=name, version=version, signing_key=key, out_path=out, cells=cells)
    manifest = info.manifest
    emit(
        {
            "bundle": str(info.path),
            "sha256": info.sha256,
            "name": name,
            "version": version,
            "ood": manifest.ood.model_dump(mode="json") if manifest.ood else None,
            "cells": manifest.cells.model_dump(mode="json") if manifest.cells else None,
        }
    )


@cli.command("publish")
@click.option("--bundle", "bundle_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--hub", default=None, help="Hub base URL (default: config hub_url).")
@click.option("--token", default=None, help="Hub token (default: LEUKONET_TRAINER_TOKEN).")
@click.pass_obj
@fail_cleanly
def publish_cmd(obj: TrainerConfig, bundle_path: Path, hub: str | None, token: str | None) -> None:
    """Upload a bundle to the hub's model registry."""
    from trainer.publish import publish

    hub_url = hub or obj.hub_url
    if not hub_url:
        raise click.UsageError("no hub URL: pass --hub or set LEUKONET_TRAINER_HUB_URL")
    emit(publish(bundle_path, hub_url, require_token(obj, token)))


@cli.command("run")
@train_options
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
@INT8_OPTION
@click.option(
    "--positive-label", default=None, help="Disease label for sensitivity and cell models (default: ALL)."
)
@cell_options
@click.pass_obj
@fail_cleanly
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

    The last stdout line is a JSON summary: bundle, sha256, metrics, parity, ood, cells, published.
    """
    from trainer.pipeline import run_pipeline

    cells = cell_options_from(positive_label, kw)
    hub_url = hub or obj.hub_url
    summary = run_pipeline(
        train_config_from_options(obj, **kw),
        name=name,
        version=version,
        signing_key=require_signing_key(obj, signing_key),
        hub_url=hub_url,
        token=require_token(obj, token) if hub_url else None,
        int8=int8,
        positive_label=positive_label,
        cells=cells,
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
@fail_cleanly
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

    from trainer.jobs_client import JobError
    from trainer.service import TrainerService

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
    emit({"jobs": done, "worker": config.worker})


cli.add_command(fields_cmd)
