"""The ``evidence`` table: one row per stored evidence image (the file itself is in the store's folder).

Keyed by the image's sha256 (the ``image_sha256`` of the results made from it), so an image is
stored once however many results or agents name it. ``stored_at`` is what retention's
``evidence_days`` counts from (indexed: the retention run reads the oldest first).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from hub.db.base import Base
from hub.db.types import UTCDateTime


class EvidenceImage(Base):
    """An evidence image an agent uploaded: what it is, who sent it, when it was stored."""

    __tablename__ = "evidence"
    __table_args__ = (Index("ix_evidence_stored_at", "stored_at", "sha256"),)

    #: the image's sha256 (of the bytes the agent read; of the frame array for camera frames)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: ``original`` (the bytes the agent read) or ``preview`` (a JPEG the agent made from them)
    kind: Mapped[str] = mapped_column(String(16))
    #: what the hub found the bytes to be (``image/jpeg``, ``image/png``, ``image/tiff``, ``image/bmp``)
    content_type: Mapped[str] = mapped_column(String(64))
    #: sha256 of the stored bytes (equal to ``sha256`` for an original)
    content_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    #: the agent id of the uploader (the token's name for a config token)
    agent_id: Mapped[str] = mapped_column(String(64))
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime())
