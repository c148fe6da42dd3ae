"""Image sources, registered explicitly by type in :data:`SOURCES`.

``folder`` is the watch folder (always on), ``http`` the HTTP endpoint (``http.enabled``), ``camera``
a camera or video (``camera.enabled``). Each hands images to :class:`agents.pipeline.Pipeline` as
:class:`agents.pipeline.Job` s and keeps the :class:`agents.sources.base.Source` contract. A factory
builds its source from a :class:`agents.sources.base.SourceContext` and returns None when the config
does not enable it. Add a source by writing its module (the class, its ``from_context`` and its
config section in :mod:`agents.config`) and one line in :data:`SOURCES`; nothing is discovered.
"""

from __future__ import annotations

from agents.sources.base import Halt, Source, SourceContext, SourceFactory
from agents.sources.camera import CameraSource
from agents.sources.folder import FolderSource
from agents.sources.http import HttpSource

SOURCES: dict[str, SourceFactory] = {
    "folder": FolderSource.from_context,
    "http": HttpSource.from_context,
    "camera": CameraSource.from_context,
}


def create_source(kind: str, ctx: SourceContext) -> Source | None:
    """Build source ``kind`` from ``ctx``; None when ``ctx.config`` does not enable it.

    Raises:
        ValueError: ``kind`` is not registered; the message lists the known sources.
    """
    if kind not in SOURCES:
        raise ValueError(f"unknown image source {kind!r}; known sources: {', '.join(sorted(SOURCES))}")
    return SOURCES[kind](ctx)


def build_sources(ctx: SourceContext) -> dict[str, Source]:
    """Every source ``ctx.config`` enables, by type, in :data:`SOURCES` order (started in that order)."""
    built = {kind: create_source(kind, ctx) for kind in SOURCES}
    return {kind: source for kind, source in built.items() if source is not None}


__all__ = ["SOURCES", "Halt", "Source", "SourceContext", "SourceFactory", "build_sources", "create_source"]
