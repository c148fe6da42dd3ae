"""What the agent sends of each image it classified (the config's ``evidence.mode``):
:class:`EvidenceMaker`, and the preview JPEG (:func:`make_preview`).

- ``preview`` (default): a JPEG whose longer side is at most ``preview_max_side``, encoded by OpenCV
  from the decoded pixels, so it carries no EXIF or other metadata of the original file;
- ``original``: the bytes the agent read (the hub checks they hash to the key). An original over
  ``max_bytes``, and a camera frame (which has no file), is sent as a preview instead;
- ``none``: nothing; the result still goes out.
"""

from __future__ import annotations

import hashlib
import logging

import cv2
import numpy as np

from agents.config import EvidenceConfig
from agents.evidence.queue import Evidence
from shared.logs import kv

log = logging.getLogger(__name__)

_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"BM", "image/bmp"),
)


def sniff_content_type(data: bytes) -> str:
    """The image type ``data`` starts with (JPEG, PNG, TIFF, BMP), else ``application/octet-stream``."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    return "application/octet-stream"


def to_8bit(image: np.ndarray) -> np.ndarray:
    """``image`` as uint8 gray or BGR: 16-bit scaled down, alpha dropped.

    Raises:
        ValueError: not a 2-D image with 1, 3 or 4 channels of uint8 or uint16.
    """
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"cannot make a preview of a {image.dtype} image; expected uint8 or uint16")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) or 0 in image.shape[:2]:
        raise ValueError(f"cannot make a preview of an image of shape {image.shape}")
    return image


def shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` with its longer side at most ``max_side`` (never enlarged).

    Area averaging by the largest whole factor first (OpenCV's fast path: a 2592x1944 field in
    about 2 ms, where area averaging by 2.53 takes about 40), then bilinear for the rest, which is
    under 2x and so does not alias; within half a grey level of area averaging all the way.
    """
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    factor = int(1 / scale)
    if factor >= 2 and min(height, width) >= factor:
        # crop to a multiple of the factor (at most factor - 1 pixels) so the fast path applies
        cut = image[: height - height % factor, : width - width % factor]
        image = cv2.resize(
            cut, (cut.shape[1] // factor, cut.shape[0] // factor), interpolation=cv2.INTER_AREA
        )
    if (image.shape[1], image.shape[0]) == size:
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def make_preview(image: np.ndarray, max_side: int, quality: int) -> bytes:
    """A baseline JPEG of ``image`` (BGR or gray) whose longer side is at most ``max_side``
    (:func:`shrink`). OpenCV writes a bare JFIF: no EXIF, no other metadata of the original file.

    Raises:
        ValueError: the array is not an image (:func:`to_8bit`), or OpenCV cannot encode it.
    """
    image = shrink(to_8bit(image), max_side)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape[1]}x{image.shape[0]} preview")
    return bytes(buf.tobytes())


class EvidenceMaker:
    """Makes the evidence of one classified image, per the config's ``evidence`` section.

    Called on a pipeline thread with the decoded image; never raises for a bad image (a preview that
    cannot be made is logged and counted in ``failures``, and the result goes out without evidence).
    """

    def __init__(self, config: EvidenceConfig) -> None:
        self.config = config
        self.failures = 0
        self.previews_for_size = 0  # originals over max_bytes sent as previews

    @property
    def enabled(self) -> bool:
        return self.config.mode != "none"

    def make(
        self, sha256: str, image: np.ndarray, data: bytes | None = None, name: str = ""
    ) -> Evidence | None:
        """The evidence of the image keyed ``sha256``: ``data`` (the bytes read; None for a camera
        frame) and ``image`` (its decoded pixels). None in mode ``none`` or when no preview fits."""
        cfg = self.config
        if cfg.mode == "none":
            return None
        if cfg.mode == "original" and data is not None:
            if len(data) <= cfg.max_bytes:
                return Evidence(sha256, "original", sniff_content_type(data), sha256, data)
            self.previews_for_size += 1
            log.info(kv("evidence_original_too_large", image=name, bytes=len(data), max_bytes=cfg.max_bytes))
        try:
            body = make_preview(image, cfg.preview_max_side, cfg.jpeg_quality)
        except (ValueError, cv2.error) as exc:
            self.failures += 1
            log.warning(kv("evidence_preview_failed", image=name, error=exc, action="result sent without it"))
            return None
        if len(body) > cfg.max_bytes:
            self.failures += 1
            log.warning(
                kv("evidence_preview_too_large", image=name, bytes=len(body), max_bytes=cfg.max_bytes)
            )
            return None
        return Evidence(sha256, "preview", "image/jpeg", hashlib.sha256(body).hexdigest(), body)
