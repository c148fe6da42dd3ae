"""Structured logging and progress reporting shared by every service.

Log lines are ``time level logger event key=value ...`` so they grep and parse. Long work uses
:func:`progress`: a tqdm bar on a terminal, a log line every ``log_every`` fraction otherwise.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm


def kv(event: str, **fields: Any) -> str:
    """Format ``event key=value ...`` with values quoted when they hold spaces."""
    parts = [event]
    for k, v in fields.items():
        s = str(v)
        if " " in s or "=" in s or not s:
            s = '"' + s.replace('"', '\\"') + '"'
        parts.append(f"{k}={s}")
    return " ".join(parts)


def parse_kv(text: str) -> tuple[str, dict[str, str]]:
    """The inverse of :func:`kv`: ``'event a=1 b="x y"'`` -> ``("event", {"a": "1", "b": "x y"})``.

    Raises:
        ValueError: unbalanced quotes.
    """
    parts = shlex.split(text, posix=True)
    if not parts:
        return "", {}
    fields: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            fields[key] = value
    return parts[0], fields


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once per process (idempotent)."""
    root = logging.getLogger()
    if getattr(root, "_leukonet_configured", False):
        root.setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    root._leukonet_configured = True  # type: ignore[attr-defined]
    for noisy in ("werkzeug", "amqtt", "transitions", "urllib3", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Progress:
    """Progress over ``total`` units: tqdm on a TTY, structured log lines otherwise."""

    def __init__(
        self,
        total: int,
        desc: str,
        logger: logging.Logger,
        unit: str = "it",
        log_every: float = 0.1,
        tty: bool | None = None,
    ) -> None:
        self.total = max(int(total), 0)
        self.desc, self.logger, self.unit = desc, logger, unit
        self.n = 0
        self._start = time.monotonic()
        self._bucket = 0
        self._log_every = log_every
        self._bar: tqdm | None = None
        if tty if tty is not None else sys.stderr.isatty():
            # A pty without a size (script, some CI runners) reports 0 x 0, and tqdm then prints
            # nothing at all: fall back to 100 x 24.
            size = shutil.get_terminal_size((100, 24))
            self._bar = tqdm(
                total=self.total,
                desc=desc,
                unit=unit,
                file=sys.stderr,
                ncols=size.columns or 100,
                nrows=size.lines or 24,
            )
        self.postfix: dict[str, Any] = {}

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        self.postfix.update(postfix)
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            return
        frac = self.n / self.total if self.total else 1.0
        bucket = int(round(frac / self._log_every, 9))  # rounding: 0.1 * 3 is not 0.3 in floats
        if bucket > self._bucket or self.n == self.total:
            self._bucket = bucket
            elapsed = time.monotonic() - self._start
            eta = elapsed / frac - elapsed if frac > 0 else 0.0
            self.logger.info(
                kv(
                    "progress",
                    task=self.desc,
                    done=self.n,
                    total=self.total,
                    pct=f"{100 * frac:.0f}",
                    elapsed_s=f"{elapsed:.1f}",
                    eta_s=f"{eta:.1f}",
                    **self.postfix,
                )
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iterate(items: list[Any], desc: str, logger: logging.Logger, unit: str = "it") -> Iterator[Any]:
    with Progress(len(items), desc, logger, unit) as p:
        for item in items:
            yield item
            p.update()
