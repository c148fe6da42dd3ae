"""What the agent's parts report to the hub, wired before the MQTT link exists.

The model manager publishes model events and says when the active model changed; the pipeline says
when results were committed. Both are built before the :class:`agents.link.Link`, which needs the
model manager (desired states go to it) and the agent's status (which reads the model manager). So
they report to an :class:`Uplink`, built first, and the link attaches to it once it exists (see
:func:`agents.daemon.build_agent`). Until a link is attached, and for an agent built without MQTT,
reports go nowhere: results still wait in the outbox, and the link publishes a fresh status when it
connects.
"""

from __future__ import annotations

from typing import Protocol

from shared.schemas import ModelEvent


class Reporter(Protocol):
    """The side of the MQTT link the agent's parts report to (:class:`agents.link.Link` is one)."""

    def publish_event(self, event: ModelEvent) -> None: ...

    def publish_status(self) -> None: ...

    def notify_outbox(self) -> None: ...


class Uplink:
    """Forwards reports to the attached :class:`Reporter`, or drops them while there is none."""

    def __init__(self) -> None:
        self._reporter: Reporter | None = None

    def attach(self, reporter: Reporter) -> None:
        """From now on, reports go to ``reporter`` (the agent attaches its link once, at build time)."""
        self._reporter = reporter

    def publish_event(self, event: ModelEvent) -> None:
        """A model event (downloading, verifying, activated, failed, rolled back)."""
        if self._reporter is not None:
            self._reporter.publish_event(event)

    def publish_status(self) -> None:
        """The agent's status changed (e.g. another model is active): publish it now."""
        if self._reporter is not None:
            self._reporter.publish_status()

    def notify_outbox(self) -> None:
        """Results were committed to the outbox: send them."""
        if self._reporter is not None:
            self._reporter.notify_outbox()
