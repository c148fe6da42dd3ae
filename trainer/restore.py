"""Restoring a pretrained checkpoint into a new graph, minus the excluded scopes (TF-Slim's habit).

Fine-tuning the official slim ``inception_v3.ckpt`` (2016-08-28, 1001 ImageNet classes) on two
classes must restore every model variable except the classification heads
(``InceptionV3/Logits``, ``InceptionV3/AuxLogits``), whose shapes differ; those keep their fresh
initial values. Only *model* variables are restored (weights, biases, batch-norm statistics), never
the optimizer's slots or the global step, so a run starts at step 0 with a new optimizer.

A variable the checkpoint lacks, or holds with another shape, stops the run with the list of
offenders (typically a ``--depth-multiplier`` other than the checkpoint's, 1.0 for the official
release) instead of silently training from random weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from shared.logs import kv

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored into the graph; the message says which variables and why."""


def resolve_checkpoint(path: str | Path) -> str:
    """The checkpoint prefix for ``path``: a prefix (``…/inception_v3.ckpt``) or a folder (latest in it).

    Raises:
        CheckpointError: nothing restorable there.
    """
    import tensorflow as tf

    p = Path(path)
    if p.is_dir():
        latest = tf.train.latest_checkpoint(str(p))
        if latest is None:
            raise CheckpointError(f"checkpoint folder {p} holds no checkpoint (no 'checkpoint' index file)")
        return str(latest)
    if Path(str(p) + ".index").is_file():
        return str(p)
    raise CheckpointError(
        f"checkpoint {p} not found: pass the prefix (e.g. /models/inception_v3.ckpt, "
        "as extracted from inception_v3_2016_08_28.tar.gz) or a folder of checkpoints"
    )


def in_scopes(name: str, scopes: Iterable[str]) -> bool:
    """Whether variable ``name`` lies in one of ``scopes`` (``A/B`` holds ``A/B/w``, not ``A/BC/w``)."""
    return any(name == s or name.startswith(s.rstrip("/") + "/") for s in scopes)


def variables_to_restore(variables: Sequence[Any], exclusions: Sequence[str]) -> list[Any]:
    """``variables`` minus those inside ``exclusions`` (TF-Slim's ``get_variables_to_restore``)."""
    return [v for v in variables if not in_scopes(v.op.name, exclusions)]


def restore_saver(checkpoint: str, exclusions: Sequence[str], variables: Sequence[Any] | None = None) -> Any:
    """A ``tf.compat.v1.train.Saver`` that restores the model variables outside ``exclusions``.

    Build it inside the graph (before finalising); call ``saver.restore(sess, checkpoint)`` after
    the variables are initialised. ``variables`` defaults to TF-Slim's model variables.

    Raises:
        CheckpointError: a variable to restore is missing from the checkpoint or has another shape.
    """
    import tensorflow as tf
    import tf_slim as slim

    candidates = list(variables) if variables is not None else list(slim.get_model_variables())
    chosen = variables_to_restore(candidates, exclusions)
    if not chosen:
        raise CheckpointError(
            f"no variable to restore from {checkpoint}: all are excluded by {list(exclusions)}"
        )
    shapes = dict(tf.train.list_variables(checkpoint))
    problems = []
    for v in chosen:
        name = v.op.name
        want = v.shape.as_list()
        if name not in shapes:
            problems.append(f"{name} missing")
        elif list(shapes[name]) != want:
            problems.append(f"{name} shape {list(shapes[name])} in the checkpoint, {want} in the graph")
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise CheckpointError(
            f"checkpoint {checkpoint} does not fit the network: {'; '.join(problems[:8])}{more}. "
            "Use the same network and --depth-multiplier as the checkpoint (1.0 for the official "
            "inception_v3.ckpt) and exclude the heads whose class count differs"
        )
    log.info(
        kv(
            "restore_plan",
            checkpoint=checkpoint,
            restore=len(chosen),
            excluded=len(candidates) - len(chosen),
            exclusions=",".join(exclusions),
        )
    )
    return tf.compat.v1.train.Saver(var_list=chosen)
