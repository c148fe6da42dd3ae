"""One CSV line per result, with a header line, for spreadsheets and scripts.

Values are written by the standard :mod:`csv` module (RFC 4180 quoting), one line at a time, so a
stream of rows becomes a stream of text at constant memory (:func:`csv_lines`).

Spreadsheet formula injection: a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return would be run as a formula by Excel, LibreOffice or Google Sheets when the file is
opened. Every text value (names, labels, specimen ids: anything an agent or reviewer wrote) that
starts with one of those gets a leading apostrophe ``'`` (OWASP's advice): the tools then show it as
text, and a script can strip one leading ``'`` to get the value back. Numbers and times are written
by the hub and never escaped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from hub.db.models import Classification
from hub.db.review_models import ReviewStatus

#: characters that make a spreadsheet read a cell as a formula
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
HEADER = (
    "captured_at",
    "lab",
    "agent_id",
    "specimen_id",
    "image_name",
    "image_sha256",
    "label",
    "confidence",
    "flags",
    "model_name",
    "model_version",
    "precision",
    "device",
    "review_state",
    "reviewed_label",
    "signed_by",
    "signed_at",
    "result_id",
)


def safe_text(value: str | None) -> str:
    """``value`` as a spreadsheet shows it as text: a leading ``'`` before a formula character."""
    if not value:
        return ""
    return "'" + value if value.startswith(FORMULA_START) else value


def _time(value: datetime | None) -> str:
    return value.isoformat().replace("+00:00", "Z") if value is not None else ""


def flags(result: Classification) -> str:
    """The result's flags, ``;``-separated: ``unfamiliar``, ``low_confidence`` (empty: none)."""
    named = (("unfamiliar", result.unfamiliar), ("low_confidence", result.low_confidence))
    return ";".join(name for name, on in named if on)


def csv_row(result: Classification, status: ReviewStatus | None) -> list[Any]:
    """The values of one result's line, in :data:`HEADER` order."""
    return [
        _time(result.captured_at),
        safe_text(result.lab),
        safe_text(result.agent_id),
        safe_text(result.specimen_id),
        safe_text(result.image_name),
        safe_text(result.image_sha256),
        safe_text(result.label),
        f"{result.confidence:.6g}",
        flags(result),
        safe_text(result.model_name),
        safe_text(result.model_version),
        safe_text(result.precision),
        safe_text(result.device),
        status.state if status is not None else "unreviewed",
        safe_text(status.current_label if status is not None else result.label),
        safe_text(status.signed_by if status is not None else None),
        _time(status.signed_at if status is not None else None),
        str(result.result_id),
    ]


def csv_lines(rows: Iterable[tuple[Classification, ReviewStatus | None]]) -> Iterator[str]:
    """The header line, then one line per row, each as soon as its row is read."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def line(values: Iterable[Any]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        return buffer.getvalue()

    yield line(HEADER)
    for result, status in rows:
        yield line(csv_row(result, status))
