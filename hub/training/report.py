"""How a training job's progress reads to a person, the same on the dashboard and in the CLI.

Pure functions over the job JSON (:func:`hub.api.serialize.training_job_json`); no Flask, no
database, so the operator CLI can use them too. ``hub/static/training.js`` mirrors the wording.
"""

from __future__ import annotations

from typing import Any


def duration(seconds: float) -> str:
    """Seconds as ``45 s``, ``12 min`` or ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def progress_text(progress: dict[str, Any] | None) -> str:
    """A job's latest progress as ``train 40% (120/300) · ETA 3 min``; ``—`` before the first report."""
    if not progress:
        return "—"
    text = str(progress.get("phase", ""))
    done, total = progress.get("done", 0), progress.get("total", 0)
    if total:
        text += f" {100 * done / total:.0f}% ({done}/{total})"
    eta = progress.get("eta_s")
    if eta is not None:
        text += f" · ETA {duration(float(eta))}"
    return text
