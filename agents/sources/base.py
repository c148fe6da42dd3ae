"""The contract every image source keeps, and what a source is built from.

A source takes images from somewhere (a folder, HTTP requests, a camera) and hands each to the
pipeline as a :class:`agents.pipeline.Job` whose ``on_done`` hook is the source's own: the pipeline
calls it exactly once with the :class:`agents.pipeline.Outcome`, and the source does what its input
needs then (the watch folder moves the file to ``done`` or ``failed``; the HTTP endpoint answers the
request; a camera frame needs nothing). A source submits only while a model is active and
:meth:`agents.pipeline.Pipeline.blocked_reason` is empty, and waits or drops (saying so) otherwise.

:class:`Source` is the whole interface the agent uses: ``start()`` after the pipeline and the model
manager started, ``stop()`` before the pipeline drains. A source is built by a factory registered in
:data:`agents.sources.SOURCES` from a :class:`SourceContext`; the factory returns None when the
agent's config does not enable that source.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agents.config import AgentConfig
from agents.models import ModelManager
from agents.outbox import Outbox
from agents.pipeline import Pipeline


class Source(Protocol):
    """An image source the agent starts and stops."""

    def start(self) -> None:
        """Begin taking images (bind ports, start threads); return at once.

        Raises:
            OSError: the source cannot start (the message names what to change in the config).
        """
        ...

    def stop(self) -> None:
        """Stop taking images: no job is submitted after this returns. Safe before :meth:`start`."""
        ...


class SourceThread:
    """A source's own thread: ``target`` runs on it until :meth:`stop` sets :attr:`stopping`.

    ``target`` must return soon after :attr:`stopping` is set (wait on it rather than sleeping).
    """

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        self.stopping = threading.Event()
        self._name, self._target = name, target
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._target, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Set :attr:`stopping` and wait up to ``timeout`` s for the thread to end."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)


class Halt:
    """How a source ends the agent when its input is gone for good (e.g. the watch folder vanished).

    The source calls :meth:`fail`; :meth:`agents.daemon.Agent.run` notices, stops the agent and raises
    the error, so the process exits with it and its supervisor sees a failure. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._failed = threading.Event()

    def fail(self, error: BaseException) -> None:
        """Ask the agent to stop with ``error`` (the first error wins)."""
        with self._lock:
            if self._error is None:
                self._error = error
        self._failed.set()

    def wait(self, stop: threading.Event, interval: float = 0.2) -> None:
        """Block until ``stop`` is set (return) or a source failed (raise its error)."""
        while not stop.is_set():
            if self._failed.wait(interval):
                with self._lock:
                    assert self._error is not None
                    raise self._error


@dataclass(frozen=True)
class SourceContext:
    """What a source factory may use.

    Attributes:
        config: the agent's config; each source reads its own section.
        pipeline: where jobs go (and whether it takes them now).
        models: whether a model is active.
        outbox: the move journal of files whose result is committed.
        halt: ends the agent with an error the source cannot recover from.
    """

    config: AgentConfig
    pipeline: Pipeline
    models: ModelManager
    outbox: Outbox
    halt: Halt


SourceFactory = Callable[[SourceContext], "Source | None"]
