"""`trainer serve` pieces that need no hub: progress parsing, path confinement, run arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.logs import kv
from shared.training import TrainingJobSpec
from trainer.job_child import progress_from_line, run_args
from trainer.jobs_client import JobError
from trainer.service import inside


def test_progress_lines_become_job_progress() -> None:
    line = "2026-11-23 23:08:40,904 INFO trainer.train " + kv(
        "progress",
        task="train",
        done=270,
        total=300,
        pct=90,
        elapsed_s=46.2,
        eta_s=5.1,
        loss="0.2377",
        acc="1.000",
        note="two words",
    )
    p = progress_from_line(line)
    assert p is not None
    assert (p.phase, p.done, p.total, p.eta_s) == ("train", 270, 300, 5.1)
    assert p.detail == {"loss": "0.2377", "acc": "1.000", "note": "two words"}
    assert progress_from_line("2026-11-23 INFO trainer.train train_done steps=300") is None
    assert progress_from_line("x INFO y progress task=train done=abc total=3") is None  # not a number
    assert progress_from_line('x INFO y progress task="unbalanced done=1') is None


def test_paths_stay_inside_their_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "set").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    assert inside(root, "set", "dataset", "data_root") == (root / "set").resolve()
    with pytest.raises(JobError, match="outside the trainer's data_root"):
        inside(root, "escape", "dataset", "data_root")
    with pytest.raises(JobError, match="LEUKONET_TRAINER_CHECKPOINT_ROOT"):
        inside(None, "inception_v3.ckpt", "checkpoint", "checkpoint_root")


def test_spec_refuses_paths_that_leave_the_root() -> None:
    for bad in ("/etc", "../x", "a/../../b", "~/x"):
        with pytest.raises(ValueError, match="relative to the trainer's root"):
            TrainingJobSpec(name="m", version="1.0.0", dataset=bad)


def test_run_arguments_carry_the_spec_and_no_secret(tmp_path: Path) -> None:
    spec = TrainingJobSpec(
        name="leuko",
        version="1.2.0",
        dataset="idb2",
        mode="finetune",
        checkpoint="inception_v3.ckpt",
        steps=50,
        batch_size=8,
        learning_rate=0.01,
        image_size=149,
        depth_multiplier=0.5,
        seed=7,
        trainable_scopes=["A", "B/C"],
        stage1_steps=10,
        positive_label="ALL",
        int8=True,
    )
    args = run_args(spec, tmp_path / "idb2", tmp_path / "work", tmp_path / "ckpt" / "inception_v3.ckpt")
    pairs = dict(zip(args[1::2], args[2::2], strict=False))
    assert args[0] == "run" and "--hub" not in args and "--token" not in args and args[-1] == "--int8"
    assert "--int8" not in run_args(spec.model_copy(update={"int8": False}), tmp_path, tmp_path, None)
    assert pairs["--data"] == str(tmp_path / "idb2") and pairs["--mode"] == "finetune"
    assert pairs["--trainable-scopes"] == "A,B/C" and pairs["--stage1-steps"] == "10"
    assert pairs["--learning-rate"] == "0.01" and pairs["--image-size"] == "149"
    assert pairs["--checkpoint"].endswith("inception_v3.ckpt") and pairs["--positive-label"] == "ALL"
