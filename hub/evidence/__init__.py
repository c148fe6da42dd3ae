"""Evidence images: the pictures agents classified, stored content-addressed for reviewers.

Agents upload them with ``PUT /api/v1/evidence/<sha256>`` (:mod:`hub.api.evidence`), keyed by the
``image_sha256`` of their results; reviewers, operators and admins read them with ``GET``. The
retention run deletes those stored more than ``retention.evidence_days`` ago
(:mod:`hub.retention`). docs/evidence.md is the user's page.

- :mod:`~hub.evidence.model`: the ``evidence`` table.
- :mod:`~hub.evidence.verify`: what an upload must satisfy, and :class:`EvidenceRefused`.
- :mod:`~hub.evidence.store`: :class:`EvidenceStore`, the files and their rows.
"""

from hub.evidence.model import EvidenceImage
from hub.evidence.store import EvidenceStore, evidence_json
from hub.evidence.verify import EvidenceRefused, check_key, check_kind

__all__ = ["EvidenceImage", "EvidenceRefused", "EvidenceStore", "check_key", "check_kind", "evidence_json"]
