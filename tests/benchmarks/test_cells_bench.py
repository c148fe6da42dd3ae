"""Cell-level analysis throughput: the agent on whole smear fields, against ``benchmark_app`` on its IR.

``LEUKONET_BENCH=1 pytest -s tests/benchmarks/test_cells_bench.py`` prints::

    BENCH agent_fields_per_s <value> fields/s
    BENCH agent_cells_per_s <value> cells/s
    BENCH benchmark_app_cells_fps <value> fps
    BENCH agent_cells_vs_benchmark_app_ratio <value> ratio        (goal >= 0.8)
    BENCH agent_finder_share <value> ratio                        (goal <= 0.5)

The IR is a 299 px TF-Slim Inception V3 (random weights, 2 classes) frozen with two outputs,
``probabilities`` and the 2048 pre-logits ``features``, as the trainer exports them, and converted
with the contract's PrePostProcessor (u8 BGR NHWC in). It is built once in a child process
(TensorFlow stays out of the measured processes) and cached under ``var/bench/``. The bundle has a
``cells`` section (default finder: 257 px crops, decision "any cell with p(ALL) >= 0.5") and an ``ood``
section whose statistics are fitted on the IR's features of crops of fields that are not measured.

The fields are 2592 x 1944 JPEGs (quality 95) from ``trainer.fields.render_field`` (8-20 white cells
each, about a thousand red cells), rendered once and cached under ``var/bench/``. The agent runs as
a child ``leukonet agent run`` with no reachable broker, so every result stays in its outbox; the
measured span is from the moment the JPEGs appear in the watch folder to the ``created_at`` of the
last outbox row. Cells per second count the cells of every committed result. The agent submits
each crop as one infer request of the batch-1 IR, so ``benchmark_app`` runs that IR at batch 1 with
the agent's ``-hint``, before and after the agent (their mean is the figure). The finder share is
the agent's own mean finder time per field (logged with each field) over the per-field time of the
run (1 / fields per second). Nothing here asserts a speed.

Environment knobs: ``LEUKONET_BENCH_FIELDS`` (default 16), ``LEUKONET_BENCH_SECONDS`` (benchmark_app
``-t``, default 20), ``LEUKONET_BENCH_DEVICE`` (default CPU), ``LEUKONET_BENCH_HINT`` (default
THROUGHPUT).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from shared.bundle import Manifest, TensorSpec, build_bundle, digest_files, generate_keypair, load_private_key
from shared.cells.spec import CellAnalysisSpec, DecisionRule, FinderSpec, OodSpec
from shared.logs import parse_kv
from shared.preprocessing import PreprocessingSpec
from tests.benchmarks.test_agent_bench import run_benchmark_app
from tests.conftest import free_port

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
IR_CACHE = ROOT / "var" / "bench" / "inception_v3_299_features"
FIELD_CACHE = ROOT / "var" / "bench" / "fields_2592x1944"
SIZE = 299
LABELS = ["ALL", "normal"]
N_FIELDS = int(os.environ.get("LEUKONET_BENCH_FIELDS", "16"))
N_OOD_FIELDS = 6  # rendered for fitting (4) and calibrating (2) the OOD statistics, never measured
BENCH_SECONDS = int(os.environ.get("LEUKONET_BENCH_SECONDS", "20"))
DEVICE = os.environ.get("LEUKONET_BENCH_DEVICE", "CPU")
HINT = os.environ.get("LEUKONET_BENCH_HINT", "THROUGHPUT")
RULE = DecisionRule(kind="any", positive_labels=["ALL"], negative_label="normal", threshold=0.5)

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
        logits, end_points = inception_v3.inception_v3(images, num_classes=2, is_training=False,
                                                       create_aux_logits=False)
    tf.nn.softmax(logits, name="probabilities")
    tf.reshape(end_points["PreLogits"], [1, -1], name="features")
    init = tf.compat.v1.global_variables_initializer()
with tf.compat.v1.Session(graph=graph) as sess:
    sess.run(init)
    frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
        sess, graph.as_graph_def(), ["probabilities", "features"])
pb = out / "model.pb"
pb.write_bytes(frozen.SerializeToString())

import openvino as ov
from openvino.preprocess import ColorFormat, PrePostProcessor

model = ov.convert_model(str(pb), input=[("input:0", [1, size, size, 3], ov.Type.f32)])
def named(name):
    results = model.get_results()
    return [r for r in results if any(n.split(":")[0] == name for n in r.output(0).get_names())][0]
model = ov.Model([named("probabilities"), named("features")], model.get_parameters(), "leukonet")
ppp = PrePostProcessor(model)
ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(
    ColorFormat.BGR)
ppp.input().model().set_layout(ov.Layout("NHWC"))
ppp.input().preprocess().convert_element_type(ov.Type.f32).convert_color(ColorFormat.RGB).mean(
    127.5).scale(127.5)
for i in range(2):
    ppp.output(i).tensor().set_element_type(ov.Type.f32)
model = ppp.build()
model.input().get_tensor().set_names({"input"})
model.outputs[0].get_tensor().set_names({"probabilities"})
model.outputs[1].get_tensor().set_names({"features"})
for sub, fp16 in (("ir/fp32", False), ("ir/fp16", True)):
    (out / sub).mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out / sub / "model.xml"), compress_to_fp16=fp16)
"""


def build_feature_ir(out: Path = IR_CACHE, size: int = SIZE) -> Path:
    """Build (once) the 299 px Inception V3 with ``probabilities`` and ``features`` outputs under ``out``."""
    if (out / "ir/fp32/model.xml").is_file() and (out / "ir/fp16/model.bin").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"building the {size} px Inception V3 IR with features in {out} (TensorFlow, about a minute)...")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    subprocess.run([sys.executable, "-c", _BUILD_IR, str(tmp), str(size)], check=True, env=env, timeout=1200)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def rendered_fields(n: int, folder: Path = FIELD_CACHE) -> list[Path]:
    """``n`` generated 2592 x 1944 field JPEGs (cached; field ``i`` is the same on every run)."""
    from trainer.fields import FIELD_HEIGHT, FIELD_WIDTH, render_field

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"field-{i:03d}.jpg"
        if not path.is_file():
            label = "ALL" if i % 2 == 0 else "normal"
            bgr, _ = render_field(np.random.default_rng(1000 + i), label, FIELD_WIDTH, FIELD_HEIGHT)
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
            assert ok
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(buf.tobytes())
            os.replace(tmp, path)
        paths.append(path)
    return paths


def fit_stats(xml: Path, fields: list[Path], out: Path) -> float:
    """Fit OOD statistics on the IR's features of the crops of ``fields`` (the last two calibrate);
    write them to ``out`` and return the threshold (1 % of the calibration crops above it)."""
    import openvino as ov

    from agents.cells.prepare import prepare_field
    from shared.ood import calibrate, fit_ood
    from shared.preprocessing import decode_image

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    features = []
    for path in fields:
        crops = prepare_field(
            decode_image(path.read_bytes()), FinderSpec(), PreprocessingSpec(image_size=SIZE)
        ).crops
        features.append(np.stack([request.infer({"input": c[None]})["features"][0].copy() for c in crops]))
    model = fit_ood(np.concatenate(features[:-2]))
    model.save(out)
    return calibrate(model, np.concatenate(features[-2:]), 0.01)


def make_bundle(ir_dir: Path, folder: Path, stats_fields: list[Path]) -> tuple[Path, Path]:
    """A signed bundle of the cached IR with ``cells`` and ``ood`` sections; returns (zip, public key)."""
    priv, pub = folder / "signing.pem", folder / "signing.pub.pem"
    generate_keypair(priv, pub)
    src = folder / "src"
    shutil.copytree(ir_dir / "ir", src / "ir")
    threshold = fit_stats(src / "ir/fp32/model.xml", stats_fields, src / "ood/stats.npz")
    files = [
        "ir/fp32/model.xml",
        "ir/fp32/model.bin",
        "ir/fp16/model.xml",
        "ir/fp16/model.bin",
        "ood/stats.npz",
    ]
    manifest = Manifest(
        name="inception-cells-bench",
        version="1.0.0",
        labels=LABELS,
        input=TensorSpec(name="input", shape=[1, SIZE, SIZE, 3], dtype="uint8", layout="NHWC"),
        output=TensorSpec(name="probabilities", shape=[1, len(LABELS)], dtype="float32"),
        preprocessing=PreprocessingSpec(image_size=SIZE),
        artifacts={"ir_fp32": "ir/fp32/model.xml", "ir_fp16": "ir/fp16/model.xml"},
        files=digest_files(src, files),
        cells=CellAnalysisSpec(decision=RULE),
        ood=OodSpec(
            stats_file="ood/stats.npz", feature_output="features", feature_dim=2048, threshold=threshold
        ),
    )
    out = folder / "inception-cells-bench-1.0.0.zip"
    build_bundle(src, manifest, load_private_key(priv), out)
    return out, pub


def run_agent(tmp: Path, bundle: Path, public_key: Path, fields: list[Path]) -> dict[str, float]:
    """Run ``leukonet agent run`` on copies of ``fields``; return fields/s, cells/s and the finder's
    mean time per field (ms, from the agent's ``classified`` log lines)."""
    watch, state, staging = tmp / "watch", tmp / "state", tmp / "staging"
    watch.mkdir()
    staging.mkdir()
    for p in fields:
        shutil.copy(p, staging / p.name)
    cfg = tmp / "agent.yaml"
    cfg.write_text(
        f"agent_id: cells-bench\nwatch_dir: {watch}\nstate_dir: {state}\nbackend: openvino\n"
        f"device: {DEVICE}\nperformance_hint: {HINT}\nmodel_public_key: {public_key}\n"
        f"initial_model: {bundle}\npoll_interval_s: 0.02\nsettle_s: 0\nstatus_interval_s: 3600\n"
        f"log_level: INFO\nmqtt: {{port: {free_port()}, reconnect_min_s: 30, reconnect_max_s: 60}}\n"
    )
    ready, log_path = tmp / "ready", tmp / "agent.log"
    with log_path.open("wb") as err:
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
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "agent did not become ready"
            time.sleep(0.05)
        t0 = time.time()
        for p in fields:
            os.replace(staging / p.name, watch / p.name)
        db = sqlite3.connect(str(state / "outbox.sqlite3"))
        deadline = time.monotonic() + 1800
        while True:
            (n,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
            if n >= len(fields):
                break
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, f"only {n} of {len(fields)} results after 30 min"
            time.sleep(0.1)
        (last,) = db.execute("SELECT MAX(created_at) FROM outbox").fetchone()
        payloads = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox")]
        db.close()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert all(p["input_kind"] == "field" for p in payloads), "every image must run as a field"
    cells = sum(len(p["cells"]) for p in payloads)
    finder = []
    for line in log_path.read_text().splitlines():
        m = re.search(r" agents\.writer (classified .*)$", line)
        if m:
            _, fields_kv = parse_kv(m.group(1))
            if "finder_ms" in fields_kv:
                finder.append(float(fields_kv["finder_ms"]))
    assert len(finder) == len(fields), (
        f"{len(finder)} classified lines with finder_ms for {len(fields)} fields"
    )
    span = float(last) - t0
    return {
        "fields_per_s": len(fields) / span,
        "cells_per_s": cells / span,
        "cells": cells,
        "finder_ms": float(np.mean(finder)),
        "unfamiliar": sum(bool(p["unfamiliar"]) for p in payloads),
    }


@pytest.mark.timeout(3600)  # the first run builds the IR and renders the fields
def test_agent_fields_vs_benchmark_app(tmp_path: Path):
    ir_dir = build_feature_ir()
    all_fields = rendered_fields(N_FIELDS + N_OOD_FIELDS)
    fields, stats_fields = all_fields[:N_FIELDS], all_fields[N_FIELDS:]
    bundle, pub = make_bundle(ir_dir, tmp_path, stats_fields)
    xml = ir_dir / "ir/fp32/model.xml"
    before, _ = run_benchmark_app(xml, DEVICE, HINT, BENCH_SECONDS)
    agent = run_agent(tmp_path, bundle, pub, fields)
    after, _ = run_benchmark_app(xml, DEVICE, HINT, BENCH_SECONDS)
    fps = (before + after) / 2
    per_field_ms = 1e3 / agent["fields_per_s"]
    print(
        f"\nbench: {N_FIELDS} fields 2592x1944 JPEG, {agent['cells']:.0f} cells "
        f"({agent['cells'] / N_FIELDS:.1f} per field, {agent['unfamiliar']:.0f} fields unfamiliar), IR {xml} "
        f"(batch 1), device {DEVICE}, hint {HINT}"
    )
    print(f"bench: benchmark_app {before:.2f} fps before the agent run, {after:.2f} fps after")
    print(
        f"bench: finder {agent['finder_ms']:.0f} ms per field (mean, in the agent) of {per_field_ms:.0f} ms "
        f"per field; host load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    print(f"BENCH agent_fields_per_s {agent['fields_per_s']:.3f} fields/s")
    print(f"BENCH agent_cells_per_s {agent['cells_per_s']:.2f} cells/s")
    print(f"BENCH benchmark_app_cells_fps {fps:.2f} fps")
    print(f"BENCH agent_cells_vs_benchmark_app_ratio {agent['cells_per_s'] / fps:.3f} ratio")
    print(f"BENCH agent_finder_share {agent['finder_ms'] / per_field_ms:.3f} ratio")
    assert agent["cells"] > 0 and fps > 0
