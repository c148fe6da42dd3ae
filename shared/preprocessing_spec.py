"""The preprocessing contract, without the code that runs it (no OpenCV, no numpy).

TF-Slim's Inception evaluation preprocessing, as bundles record it and every role agrees on:
RGB floats in [0, 1], central crop of 87.5 %, bilinear resize to the model size, then
``(x - 0.5) * 2``. :mod:`shared.preprocessing` runs it with OpenCV; processes that only read or
write manifests (the hub, the operator CLI) import this module and stay free of OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_IMAGE_SIZE = 299
CENTRAL_FRACTION = 0.875
# uint8 -> [-1, 1]: x / 127.5 - 1 == (x / 255 - 0.5) * 2
INPUT_MEAN = 127.5
INPUT_SCALE = 127.5
COLOR_ORDER = "RGB"  # what the network was trained on
DECODED_ORDER = "BGR"  # what OpenCV decodes, and what agents feed the IR

SUPPORTED_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
#: Largest image (width x height) decoded by default: above the largest microscope cameras (~100 MP).
DEFAULT_MAX_PIXELS = 100_000_000


class PreprocessingSpec(BaseModel):
    """What a bundle's manifest records about its preprocessing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(DEFAULT_IMAGE_SIZE, ge=32, le=1024, title="square model input size")
    central_fraction: float = Field(CENTRAL_FRACTION, gt=0, le=1, title="central crop fraction")
    resize: str = Field("bilinear_half_pixel", title="resize method")
    input_color_order: str = Field(DECODED_ORDER, title="channel order the IR expects")
    input_dtype: str = Field("uint8", title="element type the IR expects")
    model_color_order: str = Field(COLOR_ORDER, title="channel order the network was trained on")
    mean: float = INPUT_MEAN
    scale: float = INPUT_SCALE


@dataclass(frozen=True)
class CropBox:
    top: int
    left: int
    height: int
    width: int


def central_crop_box(height: int, width: int, fraction: float = CENTRAL_FRACTION) -> CropBox:
    """The box ``tf.image.central_crop`` keeps, computed the same way."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"central fraction must be in (0, 1], got {fraction}")
    top = int((height - height * fraction) / 2)
    left = int((width - width * fraction) / 2)
    return CropBox(top=top, left=left, height=height - 2 * top, width=width - 2 * left)
