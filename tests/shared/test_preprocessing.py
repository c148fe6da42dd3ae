import cv2
import numpy as np
import pytest

from shared.preprocessing import (
    ImageDecodeError,
    central_crop_box,
    crop_and_resize,
    decode_image,
    to_network_input,
)


def _jpeg(h=120, w=160) -> bytes:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def test_decode_and_crop_shape():
    img = decode_image(_jpeg())
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8
    out = crop_and_resize(img, 75)
    assert out.shape == (75, 75, 3) and out.dtype == np.uint8


def test_central_crop_box_matches_tensorflow_formula():
    # tf.image.central_crop: start = int((size - size * f) / 2), size' = size - 2 * start
    box = central_crop_box(100, 257, 0.875)
    assert (box.top, box.height) == (6, 88)
    assert (box.left, box.width) == (16, 225)
    with pytest.raises(ValueError):
        central_crop_box(10, 10, 0)


def test_truncated_and_garbage_are_refused_with_name():
    data = _jpeg()
    with pytest.raises(ImageDecodeError, match="scan.jpg: image is truncated"):
        decode_image(data[: len(data) // 2], "scan.jpg")
    with pytest.raises(ImageDecodeError, match="junk.png: not a decodable image"):
        decode_image(b"hello world" * 10, "junk.png")
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"", "empty.jpg")


def test_network_input_scaling_and_colour_order():
    crop = np.zeros((2, 2, 3), np.uint8)
    crop[..., 0] = 255  # blue in BGR
    x = to_network_input(crop)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], [-1.0, -1.0, 1.0])  # RGB: blue last
