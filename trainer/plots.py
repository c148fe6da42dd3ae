"""PNG plots of an evaluation: ROC curve, confusion matrix, training curves (matplotlib, Agg backend).

matplotlib is imported inside each function with the non-interactive Agg backend, so plotting
works on headless machines and importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# matplotlib 3.x parses font patterns with pyparsing's camelCase API, which pyparsing 3.3 flags as
# deprecated; not ours to fix, and pytest turns warnings into errors, so plotting silences exactly that.
_PYPARSING_RENAME = r"'\w+' deprecated - use '\w+'"


@contextlib.contextmanager
def _pyplot() -> Iterator[Any]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PYPARSING_RENAME)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        yield plt


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float | None, positive_label: str, path: Path) -> Path:
    """ROC curve of ``positive_label`` vs the rest, with the chance diagonal."""
    with _pyplot() as plt:
        fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
        ax.plot(fpr, tpr, lw=2, label=f"AUC {auc:.3f}" if auc is not None else "AUC n/a")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.set(
            xlabel="1 - specificity",
            ylabel="sensitivity",
            title=f"ROC ({positive_label} positive)",
            xlim=(0, 1),
            ylim=(0, 1.02),
        )
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path) -> Path:
    """Counts ``matrix[true][predicted]`` as an annotated heat map."""
    with _pyplot() as plt:
        m = np.asarray(matrix)
        fig, ax = plt.subplots(figsize=(4.5, 4.0), dpi=100)
        ax.imshow(m, cmap="Blues")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def plot_training(
    steps: Sequence[int],
    loss: Sequence[float],
    accuracy: Sequence[float],
    val_steps: Sequence[int],
    val_accuracy: Sequence[float],
    path: Path,
) -> Path:
    """Training loss (left) and training/validation accuracy (right) over steps."""
    with _pyplot() as plt:
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
        left.plot(steps, loss, lw=1)
        left.set(xlabel="step", ylabel="loss", title="Training loss")
        right.plot(steps, accuracy, lw=1, label="train batch")
        if val_steps:
            right.plot(val_steps, val_accuracy, "o-", label="validation")
        right.set(xlabel="step", ylabel="accuracy", ylim=(0, 1.02), title="Accuracy")
        right.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path
