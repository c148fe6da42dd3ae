"""Test helpers for the agent: tiny real OpenVINO IRs, signed bundles, images and an MQTT recorder.

The IR is built from OpenVINO opset ops (no TensorFlow): u8 NHWC BGR ``input`` [1, S, S, 3] ->
convert -> per-channel mean -> scale to [-1, 1] -> matmul -> softmax ``probabilities``. With
``flip=False`` bluish images score label 0 ("ALL"), with ``flip=True`` label 1 ("normal").

A bundle may also carry the optional INT8 IR (``make_bundle(int8=...)``): ``"nncf"`` is the FP32 IR
quantized by the trainer's own ``trainer.int8.quantize_int8``; ``"swapped"`` puts the other colour
rule's IR under the INT8 name, a wrong model whose answers tell at once which IR ran.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import paho.mqtt.client as mqtt

from shared.bundle import Manifest, TensorSpec, build_bundle, digest_files, generate_keypair, load_private_key
from shared.preprocessing import PreprocessingSpec, crop_and_resize
from tests import conftest

SIZE = 32
LABELS = ["ALL", "normal"]


def weights(flip: bool) -> np.ndarray:
    w = np.array([[3.0, -3.0], [0.5, -0.5], [-3.0, 3.0]], dtype=np.float32)  # rows: B, G, R
    return -w if flip else w


def build_ir(xml_path: Path, flip: bool = False, fp16: bool = False) -> None:
    import openvino as ov
    import openvino.opset13 as ops

    param = ops.parameter([1, SIZE, SIZE, 3], ov.Type.u8, name="input")
    param.output(0).get_tensor().set_names({"input"})
    x = ops.convert(param, ov.Type.f32)
    mean = ops.reduce_mean(x, ops.constant(np.array([1, 2], dtype=np.int64)), keep_dims=False)
    scaled = ops.subtract(ops.divide(mean, ops.constant(np.float32(127.5))), ops.constant(np.float32(1.0)))
    logits = ops.matmul(scaled, ops.constant(weights(flip)), False, False)
    probs = ops.softmax(logits, 1)
    probs.output(0).get_tensor().set_names({"probabilities"})
    model = ov.Model([probs], [param], "tiny")
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=fp16)


def reference_probabilities(image_bgr: np.ndarray, flip: bool) -> list[float]:
    """What the tiny IR computes, in numpy (float64)."""
    crop = crop_and_resize(image_bgr, SIZE)
    mean = crop.reshape(-1, 3).astype(np.float64).mean(axis=0) / 127.5 - 1.0
    logits = mean @ weights(flip).astype(np.float64)
    e = np.exp(logits - logits.max())
    return [float(v) for v in e / e.sum()]


def image(color_bgr: tuple[int, int, int], h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.full((h, w, 3), color_bgr, dtype=np.int16)
    return np.clip(base + rng.integers(-10, 10, size=(h, w, 3)), 0, 255).astype(np.uint8)


def write_png(path: Path, color_bgr: tuple[int, int, int], seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", image(color_bgr, seed=seed))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


BLUE = (200, 60, 30)
RED = (30, 60, 200)


def reference_image() -> np.ndarray:
    """The reference image ``make_bundle`` ships (bluish: label 0 unless ``flip``)."""
    return image(BLUE, 80, 80, seed=7)


Int8Kind = Literal["nncf", "swapped"]
INT8_XML = "ir/int8/model.xml"  # = trainer.int8.IR_INT8; only the "nncf" kind imports trainer code


def build_int8_ir(src: Path, kind: Int8Kind, flip: bool) -> None:
    """Write ``src/ir/int8/model.{xml,bin}`` of ``kind`` next to the FP32 IR in ``src/ir/fp32``."""
    if kind == "swapped":
        build_ir(src / INT8_XML, flip=not flip)
        return
    from trainer.int8 import MIN_CALIBRATION_IMAGES, quantize_int8

    colours = [BLUE, RED]
    crops = [
        crop_and_resize(image(colours[i % 2], seed=100 + i), SIZE) for i in range(2 * MIN_CALIBRATION_IMAGES)
    ]
    quantize_int8(src / "ir/fp32/model.xml", src / INT8_XML, crops)


@dataclass
class Keys:
    private: Path
    public: Path


def make_keys(folder: Path) -> Keys:
    keys = Keys(folder / "signing.pem", folder / "signing.pub.pem")
    generate_keypair(keys.private, keys.public)
    return keys


def make_bundle(
    folder: Path,
    keys: Keys,
    version: str = "1.0.0",
    flip: bool = False,
    reference: bool = True,
    name: str = "leukonet-tiny",
    reference_probs: list[float] | None = None,
    int8: Int8Kind | None = None,
    parity: dict[str, float] | None = None,
) -> tuple[Path, str]:
    """A signed bundle with FP32 + FP16 tiny IRs (+ an ``int8`` kind ``ir_int8``); returns (zip, sha256)."""
    src = folder / f"src-{name}-{version}"
    build_ir(src / "ir/fp32/model.xml", flip=flip, fp16=False)
    build_ir(src / "ir/fp16/model.xml", flip=flip, fp16=True)
    (src / "model.pb").write_bytes(b"frozen graph placeholder: agents never read it")
    files = ["model.pb", "ir/fp32/model.xml", "ir/fp32/model.bin", "ir/fp16/model.xml", "ir/fp16/model.bin"]
    artifacts = {"frozen_graph": "model.pb", "ir_fp32": "ir/fp32/model.xml", "ir_fp16": "ir/fp16/model.xml"}
    if int8 is not None:
        build_int8_ir(src, int8, flip)
        files += [INT8_XML, INT8_XML[:-4] + ".bin"]
        artifacts["ir_int8"] = INT8_XML
    metrics: dict[str, Any] = {"accuracy": 0.9}
    if reference:
        ref = reference_image()
        cv2.imwrite(str(src / "reference.png"), ref)
        files.append("reference.png")
        artifacts["reference_image"] = "reference.png"
        metrics["reference_probabilities"] = reference_probs or reference_probabilities(ref, flip)
    manifest = Manifest(
        name=name,
        version=version,
        labels=LABELS,
        input=TensorSpec(name="input", shape=[1, SIZE, SIZE, 3], dtype="uint8", layout="NHWC"),
        output=TensorSpec(name="probabilities", shape=[1, len(LABELS)], dtype="float32"),
        preprocessing=PreprocessingSpec(image_size=SIZE),
        artifacts=artifacts,
        files=digest_files(src, files),
        metrics=metrics,
        parity=parity or {},
    )
    out = folder / f"{name}-{version}.zip"
    sha = build_bundle(src, manifest, load_private_key(keys.private), out)
    return out, sha


class Recorder:
    """A paho subscriber that records (topic, payload, retain) on a filter; waits with a deadline."""

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str,
        client_id: str | None = None,
        clean_session: bool = True,
    ) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "", clean_session=clean_session
        )
        self.client.reconnect_delay_set(1, 1)
        self._filter = topic_filter

        def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
            c.subscribe(topic_filter, qos=1)

        def on_subscribe(c: mqtt.Client, u: Any, mid: int, rcs: Any, p: Any) -> None:
            self._subscribed.set()

        def on_message(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
            with self._cond:
                self.messages.append((m.topic, bytes(m.payload), bool(m.retain)))
                self._cond.notify_all()

        self.client.on_connect, self.client.on_subscribe, self.client.on_message = (
            on_connect,
            on_subscribe,
            on_message,
        )
        self.client.connect_async(host, port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(10), f"recorder could not subscribe on {host}:{port}"

    def wait_for(
        self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float = 20.0
    ) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def payloads(self, suffix: str) -> list[bytes]:
        with self._cond:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client.reinitialise()  # closes paho's wake-up socket pair now, not at GC


@contextmanager
def bundle_server(files: dict[str, bytes], token: str) -> Iterator[tuple[str, list[str]]]:
    """A stdlib HTTP server on a free loopback port serving ``files`` to ``Bearer <token>`` only.

    Yields (base url, list of request paths seen).
    """
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (stdlib name)
            seen.append(self.path)
            if self.headers.get("Authorization") != f"Bearer {token}":
                self._send(401, b'{"error": {"code": "unauthorized", "message": "bad token"}}')
            elif self.path in files:
                self._send(200, files[self.path], "application/zip")
            else:
                self._send(404, b'{"error": {"code": "not_found", "message": "no such bundle"}}')

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
            return

    with conftest.serve_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        yield url, seen


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, step: float = 0.02) -> Any:
    """:func:`tests.conftest.wait_until` with the agent tests' longer default and finer step."""
    return conftest.wait_until(predicate, timeout, step)
