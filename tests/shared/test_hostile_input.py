"""Hostile input to the shared parsers: every MQTT payload kind and the image decoder fail only with
their own error, whatever the bytes; nesting, size, NaN and oversized collections are refused."""

from __future__ import annotations

import json
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.preprocessing import ImageDecodeError, decode_image
from shared.schemas import MAX_PAYLOAD_BYTES, PayloadError, PayloadReason, parse_payload
from shared.topics import Kind
from tests.shared.test_schemas import make_result

SETTINGS = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)


@SETTINGS
@given(kind=st.sampled_from(list(Kind)), payload=st.binary(max_size=2048))
def test_any_bytes_fail_only_with_payload_error(kind, payload):
    try:
        parse_payload(kind, payload)
    except PayloadError as exc:
        assert isinstance(exc.reason, PayloadReason)


@SETTINGS
@given(kind=st.sampled_from(list(Kind)), value=JSON_VALUES)
def test_any_json_fails_only_with_payload_error(kind, value):
    try:
        parse_payload(kind, json.dumps(value).encode())
    except PayloadError as exc:
        assert exc.reason in (PayloadReason.BAD_JSON, PayloadReason.SCHEMA, PayloadReason.TOO_LARGE)


@SETTINGS
@given(
    kind=st.sampled_from(list(Kind)),
    key=st.sampled_from(["agent_id", "label", "probabilities", "vitals"]),
    depth=st.integers(min_value=1, max_value=20_000),
)
def test_deep_nesting_anywhere_is_refused_not_recursed(kind, key, depth):
    doc = b'{"' + key.encode() + b'": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(PayloadError):
        parse_payload(kind, doc)


@pytest.mark.parametrize("kind", list(Kind))
def test_ten_thousand_brackets_are_bad_json_or_too_large(kind):
    with pytest.raises(PayloadError) as err:
        parse_payload(kind, b"[" * 10_000)
    assert err.value.reason in (PayloadReason.BAD_JSON, PayloadReason.TOO_LARGE)
    with pytest.raises(PayloadError, match="recursion limit") as err:
        parse_payload(kind, b"[" * 1_000)
    assert err.value.reason is PayloadReason.BAD_JSON


@pytest.mark.parametrize("kind", list(Kind))
def test_each_kind_has_a_size_limit_checked_before_parsing(kind):
    limit = MAX_PAYLOAD_BYTES[kind]
    with pytest.raises(PayloadError, match=f"over the {limit}-byte limit") as err:
        parse_payload(kind, b" " * (limit + 1))
    assert err.value.reason is PayloadReason.TOO_LARGE


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(token):
    doc = json.loads(make_result().to_json())
    text = json.dumps(doc).replace('"confidence": 0.9', f'"confidence": {token}')
    with pytest.raises(PayloadError, match="confidence") as err:
        parse_payload(Kind.RESULTS, text.encode())
    assert err.value.reason is PayloadReason.SCHEMA
    timings = json.dumps(doc).replace('"decode_ms": 1.0', f'"decode_ms": {token}')
    with pytest.raises(PayloadError, match="decode_ms"):
        parse_payload(Kind.RESULTS, timings.encode())
    status = f'{{"agent_id": "a1", "state": "online", "vitals": {{"cpu_percent": {token}}}}}'
    with pytest.raises(PayloadError, match="cpu_percent"):
        parse_payload(Kind.STATUS, status.encode())


def test_probabilities_are_bounded_to_the_label_limit():
    probs = {f"l{i}": 0.0 for i in range(65)}
    probs["l0"] = 1.0
    doc = json.loads(make_result().to_json()) | {"label": "l0", "probabilities": probs}
    with pytest.raises(PayloadError, match="probabilities"):
        parse_payload(Kind.RESULTS, json.dumps(doc).encode())
    huge = {f"k{i}": 0.0 for i in range(100_000)}
    with pytest.raises(PayloadError) as err:
        parse_payload(Kind.RESULTS, json.dumps(doc | {"probabilities": huge}).encode())
    assert err.value.reason is PayloadReason.TOO_LARGE


# --- images -------------------------------------------------------------------------------------


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header and end marker that declares ``width`` x ``height`` with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(("w", "h"), [(60_000, 60_000), (12_000, 9_000)])
def test_a_pixel_bomb_is_refused_from_its_header(w, h):
    with pytest.raises(ImageDecodeError, match=r"bomb\.png: .*(too many pixels|over the limit)"):
        decode_image(png_declaring(w, h), "bomb.png")


def test_the_pixel_limit_is_configurable():
    ok, buf = cv2.imencode(".png", np.zeros((40, 50, 3), np.uint8))
    assert decode_image(buf.tobytes(), "x.png", max_pixels=2000).shape == (40, 50, 3)
    with pytest.raises(ImageDecodeError, match="40 = 2000 pixels, over the limit of 1999"):
        decode_image(buf.tobytes(), "x.png", max_pixels=1999)


@pytest.mark.parametrize(
    "image",
    [
        np.full((20, 30), 200, np.uint8),  # gray
        np.full((20, 30), 40_000, np.uint16),  # 16-bit gray
        np.full((20, 30, 3), 40_000, np.uint16),  # 16-bit colour
        np.full((20, 30, 4), 128, np.uint8),  # RGBA
    ],
)
def test_unusual_pixel_formats_come_out_as_8_bit_bgr(image):
    ok, buf = cv2.imencode(".png", image)
    out = decode_image(buf.tobytes(), "odd.png")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8


@SETTINGS
@given(
    data=st.binary(max_size=4096),
    prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\0"]),
)
def test_any_bytes_decode_or_fail_with_image_decode_error(data, prefix):
    try:
        image = decode_image(prefix + data + b"\xff\xd9", "fuzz.jpg")
    except ImageDecodeError as exc:
        assert "fuzz.jpg" in str(exc)
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
