"""What the hub checks of an evidence upload before storing it: the key, the kind, the digests, and
that the bytes are an image of a known type within the pixel bound.

Every refusal is an :class:`EvidenceRefused` (a :class:`hub.errors.HubError`, so the API answers it
as JSON) whose ``code`` names the problem; the store counts them by code.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from struct import error as struct_error
from typing import Literal

from hub.errors import HubError

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
Kind = Literal["original", "preview"]
KINDS: tuple[Kind, ...] = ("original", "preview")
#: what a preview may be: the agent encodes JPEG (PNG is accepted for lossless renditions)
PREVIEW_TYPES = frozenset({"image/jpeg", "image/png"})
_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"BM", "image/bmp"),
)
#: file name extension per content type (Content-Disposition of a download)
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/tiff": "tif", "image/bmp": "bmp"}


class EvidenceRefused(HubError):
    """An evidence upload or request the hub refuses; ``code`` says why (counted per code)."""


def check_key(value: str, what: str = "sha256") -> str:
    """``value`` if it is a lower-case sha256 hex digest.

    Raises:
        EvidenceRefused: 400 ``invalid_parameter`` naming ``what``.
    """
    if not SHA256_RE.match(value):
        raise EvidenceRefused(
            400,
            "invalid_parameter",
            f"{what} must be a sha256 hex digest (64 of 0-9 a-f, lower case), got {value[:80]!r}",
        )
    return value


def check_kind(value: str | None) -> Kind:
    """The ``X-Evidence-Kind`` header's value.

    Raises:
        EvidenceRefused: 400 ``invalid_kind`` when it is missing or not ``original`` / ``preview``.
    """
    for kind in KINDS:
        if value == kind:
            return kind
    raise EvidenceRefused(
        400, "invalid_kind", f"header X-Evidence-Kind must be original or preview, got {str(value)[:40]!r}"
    )


def sniff(head: bytes) -> str | None:
    """The image type ``head`` (a file's first bytes) starts with; None for anything else."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def check_digests(key: str, kind: Kind, declared: str | None, actual: str) -> None:
    """An original must hash to its key; every upload to the ``X-Content-SHA256`` it declares
    (required for a preview, which does not hash to its key).

    Raises:
        EvidenceRefused: 400 ``digest_mismatch`` or ``missing_digest``, naming both digests.
    """
    if declared is not None and declared != actual:
        raise EvidenceRefused(
            400,
            "digest_mismatch",
            f"the body's sha256 is {actual}, not the X-Content-SHA256 {declared} sent with it: the upload "
            "was damaged or the header is wrong",
        )
    if kind == "original" and actual != key:
        raise EvidenceRefused(
            400,
            "digest_mismatch",
            f"an original must be the bytes the agent classified, whose sha256 is the key {key}; this "
            f"body's is {actual} (send it as a preview with X-Content-SHA256 if it is a rendition)",
        )
    if kind == "preview" and declared is None:
        raise EvidenceRefused(
            400, "missing_digest", "a preview needs header X-Content-SHA256: the sha256 of the body"
        )


def original_size(path: Path, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header of the image file at ``path``; no pixel is decoded.

    Raises:
        EvidenceRefused: 422 ``not_an_image`` (header unreadable) or ``too_many_pixels``.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb warnings: judged against max_pixels below
            with Image.open(path) as im:
                width, height = int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError:
        width = height = max_pixels + 1
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct_error) as exc:
        raise EvidenceRefused(422, "not_an_image", f"the body's image header cannot be read: {exc}") from None
    _check_pixels(width, height, max_pixels)
    return width, height


def preview_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) of the preview ``data``, decoded in full within ``max_pixels``
    (:func:`shared.preprocessing.decode_image`, which reads the header's size first).

    Raises:
        EvidenceRefused: 422 ``not_an_image`` (undecodable, truncated) or ``too_many_pixels``.
    """
    # OpenCV only when a preview arrives: importing the hub's web app loads no OpenCV.
    from shared.preprocessing import ImageDecodeError, declared_size, decode_image

    try:
        declared = declared_size(data)
    except ImageDecodeError:
        declared = (max_pixels + 1, 1)
    if declared is not None:
        _check_pixels(*declared, max_pixels)
    try:
        image = decode_image(data, "the preview", max_pixels)
    except ImageDecodeError as exc:
        raise EvidenceRefused(422, "not_an_image", str(exc)) from None
    return int(image.shape[1]), int(image.shape[0])


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1 or width * height > max_pixels:
        raise EvidenceRefused(
            422,
            "too_many_pixels",
            f"the image is {width}x{height} pixels; evidence may have at most {max_pixels} "
            "(evidence.max_pixels in the hub config)",
        )


def head_of(path: Path, n: int = 16) -> bytes:
    """The first ``n`` bytes of the file at ``path``."""
    with path.open("rb") as fh:
        return fh.read(n)
