"""Image decoding and the Inception crop + resize, on uint8 with OpenCV.

The trained network expects TF-Slim's Inception evaluation preprocessing: RGB floats in [0, 1],
central crop of 87.5 %, bilinear resize to the model size, then ``(x - 0.5) * 2``. Agents do the
crop and resize here on uint8 BGR (what OpenCV decodes); the OpenVINO IR carries the colour swap
and the scaling (``x / 127.5 - 1``), so training and serving share one definition.

Resizing is bilinear with half-pixel centres and no anti-aliasing: ``cv2.INTER_LINEAR`` here and
``tf.image.resize(..., antialias=False)`` in the trainer compute the same thing.

The contract itself (constants, :class:`PreprocessingSpec`, the crop box) lives in
:mod:`shared.preprocessing_spec`, which imports no OpenCV; it is re-exported here for the code that
runs it.
"""

from __future__ import annotations

import io
import warnings
from struct import error as struct_error

import cv2
import numpy as np

from shared.preprocessing_spec import (
    CENTRAL_FRACTION,
    COLOR_ORDER,
    DECODED_ORDER,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MAX_PIXELS,
    INPUT_MEAN,
    INPUT_SCALE,
    SUPPORTED_SUFFIXES,
    CropBox,
    PreprocessingSpec,
    central_crop_box,
)


class ImageDecodeError(ValueError):
    """The bytes are not a complete image OpenCV can decode."""


def _looks_complete(data: bytes) -> bool:
    """Reject truncated JPEG/PNG files, which OpenCV would decode with grey bottoms."""
    if data[:3] == b"\xff\xd8\xff":
        return b"\xff\xd9" in data[-64:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" in data[-16:]
    return True


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header without decoding pixels; None when Pillow cannot tell.

    Raises:
        ImageDecodeError: the header declares more pixels than Pillow's own bomb limit.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Bomb warnings are judged against our own limit below; corrupt-header warnings mean
            # "size unknown", and OpenCV then decides whether the bytes are an image at all.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"declares too many pixels ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct_error):
        return None


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to a uint8 BGR array ``[H, W, 3]``.

    The header's declared size is checked against ``max_pixels`` before any pixel is decoded, so a
    small file that declares a huge image (a pixel bomb) costs nothing. Gray, 16-bit and RGBA images
    come out as 8-bit BGR.

    Raises:
        ImageDecodeError: empty, truncated, oversized or undecodable bytes; the message names
            ``name`` and what to do.
    """
    if not data:
        raise ImageDecodeError(f"{name}: file is empty")
    if not _looks_complete(data):
        raise ImageDecodeError(f"{name}: image is truncated (no end marker); was it still being written?")
    try:
        size = declared_size(data)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{name}: {exc}; the limit is {max_pixels} pixels") from None
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageDecodeError(
            f"{name}: image declares {size[0]}x{size[1]} = {size[0] * size[1]} pixels, over the limit of "
            f"{max_pixels} (raise max_pixels in the agent's pipeline config if such images are real)"
        )
    try:
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageDecodeError(f"{name}: OpenCV cannot decode it: {str(exc).strip()[-200:]}") from None
    if arr is None or arr.size == 0:
        raise ImageDecodeError(
            f"{name}: not a decodable image; supported formats: {', '.join(SUPPORTED_SUFFIXES)}"
        )
    return arr


def crop_and_resize(
    image: np.ndarray, size: int = DEFAULT_IMAGE_SIZE, fraction: float = CENTRAL_FRACTION
) -> np.ndarray:
    """Central crop + bilinear resize of a uint8 ``[H, W, 3]`` image to ``[size, size, 3]`` uint8."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got shape {image.shape}")
    box = central_crop_box(image.shape[0], image.shape[1], fraction)
    crop = image[box.top : box.top + box.height, box.left : box.left + box.width]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


def to_network_input(crop_bgr: np.ndarray) -> np.ndarray:
    """What the IR does inside: BGR uint8 -> RGB float32 in [-1, 1]. Reference for tests."""
    rgb = crop_bgr[..., ::-1].astype(np.float32)
    return rgb / np.float32(INPUT_SCALE) - np.float32(INPUT_MEAN / INPUT_SCALE)


__all__ = [
    "CENTRAL_FRACTION",
    "COLOR_ORDER",
    "DECODED_ORDER",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_MAX_PIXELS",
    "INPUT_MEAN",
    "INPUT_SCALE",
    "SUPPORTED_SUFFIXES",
    "CropBox",
    "ImageDecodeError",
    "PreprocessingSpec",
    "central_crop_box",
    "crop_and_resize",
    "declared_size",
    "decode_image",
    "to_network_input",
]
