"""Evidence images: what the agent sends the hub of each image it classified, and how.

Reviewers on the hub confirm or correct a result looking at the image it was made from, keyed by
the result's ``image_sha256``. :class:`EvidenceMaker` makes that evidence per the config's
``evidence.mode`` (a metadata-free preview JPEG, the original bytes, or nothing);
:meth:`agents.outbox.Outbox.put_many` commits it to the :class:`EvidenceQueue` with its results, so
it survives restarts and hub outages; :class:`EvidenceUploader` sends it to the hub. docs/evidence.md
is the user's page.

- :mod:`~agents.evidence.preview`: :class:`EvidenceMaker`, :func:`make_preview`.
- :mod:`~agents.evidence.queue`: :class:`Evidence`, :class:`EvidenceQueue` (its own SQLite file, cap).
- :mod:`~agents.evidence.uploader`: :class:`EvidenceUploader`.
"""

from agents.evidence.preview import EvidenceMaker, make_preview, sniff_content_type, to_8bit
from agents.evidence.queue import Evidence, EvidenceKind, EvidenceQueue, EvidenceRow
from agents.evidence.uploader import EvidenceUploader, UploadStats

__all__ = [
    "Evidence",
    "EvidenceKind",
    "EvidenceMaker",
    "EvidenceQueue",
    "EvidenceRow",
    "EvidenceUploader",
    "UploadStats",
    "make_preview",
    "sniff_content_type",
    "to_8bit",
]
