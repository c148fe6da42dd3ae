"""Agent end-to-end throughput against OpenVINO's ``benchmark_app`` on the same full-size IR and device.

``make bench`` runs this (LEUKONET_BENCH=1, ``-s``) and prints::

    BENCH agent_images_per_s <value> images/s
    BENCH benchmark_app_fps <value> fps
    BENCH agent_vs_benchmark_app_ratio <value> ratio
    BENCH agent_peak_rss_mb <value> MB

The IR is a 299 px TF-Slim Inception V3 (random weights, 2 classes, no aux logits, inference
graph), frozen and converted with the contract's PrePostProcessor (u8 BGR NHWC in, ``probabilities``
out). It is built once in a child process (TensorFlow stays out of the measured processes) and
cached under ``var/bench/``. The agent runs as a child ``leukonet agent run`` with no reachable broker,
so every result stays in its outbox: the measured span is from the moment the JPEGs appear in the
watch folder to the ``created_at`` of the last outbox row. Peak RSS is the child's ``VmHWM``.
``benchmark_app`` (``-hint`` as the agent's ``performance_hint``, ``-t`` bounded) runs just before and
just after the agent; the figure is their mean.
Nothing here asserts a speed: it measures, and asserts only that every image reached the outbox.

Environment knobs: ``LEUKONET_BENCH_IMAGES`` (default 200), ``LEUKONET_BENCH_SECONDS`` (benchmark_app
``-t``, default 20), ``LEUKONET_BENCH_DEVICE`` (default CPU), ``LEUKONET_BENCH_HINT`` (default
THROUGHPUT).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest

from shared.bundle import Manifest, TensorSpec, build_bundle, digest_files, generate_keypair, load_private_key
from shared.preprocessing import PreprocessingSpec
from tests.conftest import free_port

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "var" / "bench" / "inception_v3_299"
SIZE = 299
LABELS = ["ALL", "normal"]
N_IMAGES = int(os.environ.get("LEUKONET_BENCH_IMAGES", "200"))
BENCH_SECONDS = int(os.environ.get("LEUKONET_BENCH_SECONDS", "20"))
DEVICE = os.environ.get("LEUKONET_BENCH_DEVICE", "CPU")
HINT = os.environ.get("LEUKONET_BENCH_HINT", "THROUGHPUT")

_BUILD_IR = r"""
import sys
from pathlib import Path

import tensorflow as tf
import tf_slim as slim
from tf_slim.nets import inception_v3

out = Path(sys.argv[1])
size = int(sys.argv[2])
graph = tf.Graph()
with graph.as_default():
    images = tf.compat.v1.placeholder(tf.float32, [1, size, size, 3], name="input")
    with slim.arg_scope(inception_v3.inception_v3_arg_scope()):
        logits, _ = inception_v3.inception_v3(images, num_classes=2, is_training=False,
                                              create_aux_logits=False)
    tf.nn.softmax(logits, name="probabilities")
    init = tf.compat.v1.global_variables_initializer()
with tf.compat.v1.Session(graph=graph) as sess:
    sess.run(init)
    frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
        sess, graph.as_graph_def(), ["probabilities"])
pb = out / "model.pb"
pb.write_bytes(frozen.SerializeToString())

import openvino as ov
from openvino.preprocess import ColorFormat, PrePostProcessor

model = ov.convert_model(str(pb), input=[("input:0", [1, size, size, 3], ov.Type.f32)])
ppp = PrePostProcessor(model)
ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(
    ColorFormat.BGR)
ppp.input().model().set_layout(ov.Layout("NHWC"))
ppp.input().preprocess().convert_element_type(ov.Type.f32).convert_color(ColorFormat.RGB).mean(
    127.5).scale(127.5)
ppp.output().tensor().set_element_type(ov.Type.f32)
model = ppp.build()
model.input().get_tensor().set_names({"input"})
model.output().get_tensor().set_names({"probabilities"})
for sub, fp16 in (("ir/fp32", False), ("ir/fp16", True)):
    (out / sub).mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out / sub / "model.xml"), compress_to_fp16=fp16)
"""


def build_inception_ir(out: Path = CACHE, size: int = SIZE) -> Path:
    """Build (once) the frozen 299 px Inception V3 and its FP32/FP16 IRs under ``out``; return ``out``."""
    if (out / "ir/fp32/model.xml").is_file() and (out / "ir/fp16/model.bin").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"building the {size} px Inception V3 IR in {out} (TensorFlow, about a minute)...", flush=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    subprocess.run([sys.executable, "-c", _BUILD_IR, str(tmp), str(size)], check=True, env=env, timeout=1200)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def make_bench_bundle(ir_dir: Path, folder: Path) -> tuple[Path, Path]:
    """A signed bundle of the cached IR (no reference image: random weights); returns (zip, public key)."""
    priv, pub = folder / "signing.pem", folder / "signing.pub.pem"
    generate_keypair(priv, pub)
    files = ["model.pb", "ir/fp32/model.xml", "ir/fp32/model.bin", "ir/fp16/model.xml", "ir/fp16/model.bin"]
    manifest = Manifest(
        name="inception-bench",
        version="1.0.0",
        labels=LABELS,
        input=TensorSpec(name="input", shape=[1, SIZE, SIZE, 3], dtype="uint8", layout="NHWC"),
        output=TensorSpec(name="probabilities", shape=[1, len(LABELS)], dtype="float32"),
        preprocessing=PreprocessingSpec(image_size=SIZE),
        artifacts={
            "frozen_graph": "model.pb",
            "ir_fp32": "ir/fp32/model.xml",
            "ir_fp16": "ir/fp16/model.xml",
        },
        files=digest_files(ir_dir, files),
    )
    out = folder / "inception-bench-1.0.0.zip"
    build_bundle(ir_dir, manifest, load_private_key(priv), out)
    return out, pub


def write_jpegs(folder: Path, n: int) -> list[Path]:
    """``n`` different 640x480 JPEGs (smear-like noise) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (0, 0), 6)
    paths = []
    for i in range(n):
        img = np.roll(base, shift=(i * 7) % 480, axis=0)
        cv2.circle(img, (int(rng.integers(80, 560)), int(rng.integers(80, 400))), 40, (120, 40, 160), -1)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        p = folder / f"smear-{i:04d}.jpg"
        p.write_bytes(buf.tobytes())
        paths.append(p)
    return paths


def run_benchmark_app(xml: Path, device: str, hint: str, seconds: int) -> tuple[float, float]:
    """benchmark_app on ``xml``: (its ``Throughput:`` FPS, CPU seconds per iteration incl. start-up)."""
    exe = Path(sys.executable).with_name("benchmark_app")
    cmd = [str(exe), "-m", str(xml), "-d", device, "-hint", hint.lower(), "-t", str(seconds)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = re.search(r"Throughput:\s+([0-9.]+)\s+FPS", proc.stdout)
    count = re.search(r"Count:\s+(\d+)\s+iterations", proc.stdout)
    assert proc.returncode == 0 and m and count, (
        f"benchmark_app failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return float(m.group(1)), cpu / int(count.group(1))


def _peak_rss_mb(proc: psutil.Process, sampled_max: float) -> float:
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text()
    except OSError:
        return sampled_max
    m = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(m.group(1)) / 1024 if m else sampled_max


def run_agent(tmp: Path, bundle: Path, public_key: Path, jpegs: list[Path]) -> tuple[float, float, float]:
    """Run ``leukonet agent run`` on ``jpegs``; return (images/s, peak RSS MB, CPU s per image).

    The CPU time is the agent process's own (user + system) over the measured span only.
    """
    watch, state = tmp / "watch", tmp / "state"
    watch.mkdir()
    cfg = tmp / "agent.yaml"
    cfg.write_text(
        f"agent_id: bench-agent\nwatch_dir: {watch}\nstate_dir: {state}\nbackend: openvino\n"
        f"device: {DEVICE}\nperformance_hint: {HINT}\nmodel_public_key: {public_key}\n"
        f"initial_model: {bundle}\npoll_interval_s: 0.02\nsettle_s: 0\nstatus_interval_s: 3600\n"
        f"log_level: WARNING\nmqtt: {{port: {free_port()}, reconnect_min_s: 30, reconnect_max_s: 60}}\n"
    )
    ready = tmp / "ready"
    with (tmp / "agent.log").open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shared.cli",
                "agent",
                "run",
                "--config",
                str(cfg),
                "--ready-file",
                str(ready),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    ps = psutil.Process(proc.pid)
    peak = 0.0
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert proc.poll() is None, (tmp / "agent.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "agent did not become ready"
            time.sleep(0.05)
        cpu0 = sum(ps.cpu_times()[:2])
        t0 = time.time()
        for p in jpegs:
            os.replace(p, watch / p.name)
        db = sqlite3.connect(str(state / "outbox.sqlite3"))
        deadline = time.monotonic() + 1800
        while True:
            (n,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
            peak = max(peak, ps.memory_info().rss / 2**20)
            if n >= len(jpegs):
                break
            assert proc.poll() is None, (tmp / "agent.log").read_text()[-4000:]
            assert time.monotonic() < deadline, f"only {n} of {len(jpegs)} results after 30 min"
            time.sleep(0.1)
        cpu1 = sum(ps.cpu_times()[:2])
        (last,) = db.execute("SELECT MAX(created_at) FROM outbox").fetchone()
        db.close()
        peak = _peak_rss_mb(ps, peak)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return len(jpegs) / (float(last) - t0), peak, (cpu1 - cpu0) / len(jpegs)


def test_agent_end_to_end_vs_benchmark_app(tmp_path):
    ir_dir = build_inception_ir()
    bundle, pub = make_bench_bundle(ir_dir, tmp_path)
    jpegs = write_jpegs(tmp_path / "staging", N_IMAGES)
    xml = ir_dir / "ir/fp32/model.xml"
    # benchmark_app runs before and after the agent and the two are averaged, so a change of load
    # on a shared machine during the run weighs on both sides alike.
    before, cpu_before = run_benchmark_app(xml, DEVICE, HINT, BENCH_SECONDS)
    agent_ips, rss, agent_cpu = run_agent(tmp_path, bundle, pub, jpegs)
    after, cpu_after = run_benchmark_app(xml, DEVICE, HINT, BENCH_SECONDS)
    fps = (before + after) / 2
    print(f"\nbench: {N_IMAGES} JPEGs 640x480, IR {xml}, device {DEVICE}, hint {HINT}")
    print(f"bench: benchmark_app {before:.2f} fps before the agent run, {after:.2f} fps after")
    # CPU time per image does not depend on what else runs on the machine: on a shared host it
    # tells whether a low ratio is the agent's overhead or other processes taking the cores.
    print(
        f"bench: CPU per image: agent {agent_cpu * 1e3:.0f} ms (decode + preprocess + inference + outbox), "
        f"benchmark_app {(cpu_before + cpu_after) * 500:.0f} ms (inference, incl. its start-up), "
        f"host load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    print(f"BENCH agent_images_per_s {agent_ips:.2f} images/s")
    print(f"BENCH benchmark_app_fps {fps:.2f} fps")
    print(f"BENCH agent_vs_benchmark_app_ratio {agent_ips / fps:.3f} ratio")
    print(f"BENCH agent_peak_rss_mb {rss:.1f} MB")
    print(f"BENCH agent_cpu_ms_per_image {agent_cpu * 1e3:.1f} ms")
    assert agent_ips > 0 and fps > 0
