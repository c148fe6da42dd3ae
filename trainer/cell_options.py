"""The ``--cells`` options of ``leukonet trainer run`` and ``bundle``: declare a cell model.

A cell model classifies single white cells; agents also give it whole smear fields, in which the
finder cuts a ``--crop-side`` square around every white cell and the decision rule turns the cells'
probabilities into the field's result. :func:`cell_options_from` turns the options into a
:class:`trainer.train_config.CellOptions` (or None without ``--cells``). No TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from shared.cells.spec import DecisionRule, FinderSpec
from trainer.train_config import CellOptions

DEFAULT_POSITIVE_LABEL = "ALL"
DEFAULT_NEGATIVE_LABEL = "normal"
# Options that mean something only with --cells (None: not given).
_RULE_OPTIONS = ("decision", "negative_label", "cell_threshold", "min_count", "min_fraction", "crop_side")
_RULE_FIELDS = {  # option -> DecisionRule field
    "decision": "kind",
    "negative_label": "negative_label",
    "cell_threshold": "threshold",
    "min_count": "min_count",
    "min_fraction": "min_fraction",
}


def cell_options(fn: Callable[..., None]) -> Callable[..., None]:
    """Add ``--cells``, the decision-rule options, ``--crop-side`` and ``--eval-fields``."""
    options = [
        click.option(
            "--cells/--no-cells",
            default=False,
            show_default=True,
            help="Bundle a cell model: agents classify single-cell images whole and find, crop and "
            "classify every white cell of a field (input kinds cell + field).",
        ),
        click.option(
            "--decision",
            type=click.Choice(["any", "count", "fraction"]),
            default=None,
            help="How a field's label follows from its cells: any counting cell, at least "
            "--min-count cells, or at least --min-fraction of the cells (default: any).",
        ),
        click.option(
            "--negative-label",
            default=None,
            help=f"A field's label when the rule does not fire (default: {DEFAULT_NEGATIVE_LABEL}).",
        ),
        click.option(
            "--cell-threshold",
            type=click.FloatRange(0.0, 1.0, min_open=True),
            default=None,
            help="Probability of the positive label at which a cell counts (default: 0.5).",
        ),
        click.option(
            "--min-count", type=click.IntRange(min=1), default=None, help="--decision count: cells needed."
        ),
        click.option(
            "--min-fraction",
            type=click.FloatRange(0.0, 1.0),
            default=None,
            help="--decision fraction: share of the field's cells needed.",
        ),
        click.option(
            "--crop-side",
            type=click.IntRange(32, 2048),
            default=None,
            help=f"Side in native pixels of the square cut around each cell; the training crops' size "
            f"(default: {FinderSpec().crop_side_px}).",
        ),
        click.option(
            "--eval-fields",
            type=click.Path(file_okay=False, exists=True, path_type=Path),
            default=None,
            help="Held-out fields with ground truth (NAME.json beside each image) on which the finder "
            "and the field-level decision are evaluated into the manifest.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def cell_options_from(positive_label: str | None, kw: dict[str, Any]) -> CellOptions | None:
    """Pop the :func:`cell_options` values out of ``kw``; a :class:`CellOptions` with ``--cells``.

    Raises:
        click.UsageError: a cell option without ``--cells``.
        ValueError: the rule is invalid (e.g. the negative label is also the positive one).
    """
    cells = kw.pop("cells")
    eval_fields = kw.pop("eval_fields")
    given = {name: kw.pop(name) for name in _RULE_OPTIONS}
    if not cells:
        stray = [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]
        if eval_fields is not None:
            stray.append("--eval-fields")
        if stray:
            raise click.UsageError(f"{', '.join(stray)} apply to cell models only; add --cells")
        return None
    args = {_RULE_FIELDS[opt]: given[opt] for opt in _RULE_FIELDS if given[opt] is not None}
    args.setdefault("negative_label", DEFAULT_NEGATIVE_LABEL)
    rule = DecisionRule(positive_labels=[positive_label or DEFAULT_POSITIVE_LABEL], **args)
    finder = FinderSpec() if given["crop_side"] is None else FinderSpec(crop_side_px=given["crop_side"])
    return CellOptions(decision=rule, finder=finder, eval_fields=eval_fields)
