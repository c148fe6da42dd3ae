"""Helpers of the cell-level analysis end-to-end test (``test_cells_e2e.py``).

Everything runs the product's own entry points as child processes (``python -m shared.cli trainer
...`` and ``... agent run``), so TensorFlow never loads into the test process and the agent is the
real daemon with real OpenVINO. The agent is given no reachable broker: every result stays in its
outbox SQLite, which is read once the agent has committed one row per input.

Out-of-distribution inputs are made here, at the single-cell size (257 px), in four kinds:

* ``noise_shapes``: random-coloured ellipses and rectangles on coloured noise;
* ``inverted``: in-distribution crops with every channel inverted (``255 - v``);
* "a photo of something else": ``checkerboard``, printed ``text`` and a smooth colour ``gradient``
  (a gradient is featureless, like an empty stretch of plasma: reported, not asserted);
* ``hue_shift``: in-distribution crops with the hue rotated 60-120 degrees (reported, not asserted:
  a scratch model trained on one stain need not see colour).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
CROP_SIDE = 257
OOD_KINDS = ("noise_shapes", "inverted", "checkerboard", "text", "gradient", "hue_shift")
_CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore", "CUDA_VISIBLE_DEVICES": ""}


def leukonet(args: Sequence[str], timeout: float = 900) -> dict[str, Any]:
    """Run ``leukonet ARGS`` as a child process; its last stdout line parsed as JSON.

    Raises:
        AssertionError: the command failed (its stderr tail in the message) or printed no JSON.
    """
    env = dict(os.environ, **_CHILD_ENV)
    proc = subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"leukonet {' '.join(args[:2])} failed:\n{proc.stderr[-4000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert lines, f"leukonet {' '.join(args[:2])} printed nothing:\n{proc.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def copy_images(paths: Iterable[Path], folder: Path, prefix: str) -> list[Path]:
    """Copy ``paths`` into ``folder`` as ``PREFIX-<name>`` (unique names across sets); the copies."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in paths:
        dst = folder / f"{prefix}-{p.name}"
        shutil.copy(p, dst)
        out.append(dst)
    return out


# --- out-of-distribution inputs -------------------------------------------------------------------


def _noise_shapes(rng: np.random.Generator, side: int) -> np.ndarray:
    base = rng.integers(0, 256, 3)
    img = np.clip(base + rng.normal(0, 40, (side, side, 3)), 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 9))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        centre = (int(rng.integers(0, side)), int(rng.integers(0, side)))
        if rng.random() < 0.5:
            axes = (int(rng.integers(10, side // 2)), int(rng.integers(10, side // 2)))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
        else:
            corner = (
                centre[0] + int(rng.integers(10, side // 2)),
                centre[1] + int(rng.integers(10, side // 2)),
            )
            cv2.rectangle(img, centre, corner, colour, -1)
    return img


def _gradient(rng: np.random.Generator, side: int) -> np.ndarray:
    c0, c1 = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    t = np.clip((xx * np.cos(angle) + yy * np.sin(angle) + 1) / 2, 0, 1)[..., None]
    return np.asarray(c0 * (1 - t) + c1 * t, np.uint8)


def _checkerboard(rng: np.random.Generator, side: int) -> np.ndarray:
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    cell = int(rng.integers(8, 64))
    yy, xx = np.mgrid[0:side, 0:side]
    mask = (((yy // cell) + (xx // cell)) % 2).astype(bool)[..., None]
    return np.where(mask, c0, c1).astype(np.uint8)


def _text(rng: np.random.Generator, side: int) -> np.ndarray:
    img = np.full((side, side, 3), rng.integers(0, 256, 3), np.uint8)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    words = ["LEUKONET", "HELLO", "INVOICE 42", "lorem ipsum", "2026-12-02", "STOP"]
    for row in range(int(rng.integers(3, 7))):
        text = words[int(rng.integers(len(words)))]
        y = 30 + row * int(rng.integers(30, 45))
        cv2.putText(img, text, (int(rng.integers(0, 40)), y), cv2.FONT_HERSHEY_SIMPLEX, 0.9, colour, 2)
    return img


def _hue_shift(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hsv = cv2.cvtColor(crop, cv2.COLOR_BGR2HSV)
    shift = int(rng.integers(30, 61))  # OpenCV hue is 0..179: 60-120 degrees
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def make_ood_sets(crops: Sequence[Path], out: Path, per_kind: int, seed: int) -> dict[str, list[Path]]:
    """Write ``per_kind`` PNGs of each of :data:`OOD_KINDS` under ``out/<kind>/``; the paths per kind.

    ``crops`` are in-distribution crops (the inverted and hue-shifted sets are made from them).
    File names carry the kind, so results can be told apart by ``image_name``.
    """
    rng = np.random.default_rng(seed)
    sets: dict[str, list[Path]] = {}
    for kind in OOD_KINDS:
        folder = out / kind
        folder.mkdir(parents=True)
        paths = []
        for k in range(per_kind):
            if kind == "noise_shapes":
                img = _noise_shapes(rng, CROP_SIDE)
            elif kind == "gradient":
                img = _gradient(rng, CROP_SIDE)
            elif kind == "checkerboard":
                img = _checkerboard(rng, CROP_SIDE)
            elif kind == "text":
                img = _text(rng, CROP_SIDE)
            else:
                src = cv2.imread(str(crops[k % len(crops)]), cv2.IMREAD_COLOR)
                assert src is not None, f"cannot read crop {crops[k % len(crops)]}"
                img = 255 - src if kind == "inverted" else _hue_shift(src, rng)
            path = folder / f"ood-{kind}-{k:03d}.png"
            assert cv2.imwrite(str(path), img), f"cannot write {path}"
            paths.append(path)
        sets[kind] = paths
    return sets


# --- the agent ------------------------------------------------------------------------------------


@dataclass
class AgentRun:
    results: dict[str, dict[str, Any]]  # image_name -> outbox payload
    seconds: float  # from the inputs appearing in the watch folder to the last committed result
    precision: str  # what the agent reports it compiled the model at


def run_agent(
    tmp: Path, bundle: Path, public_key: Path, inputs: Sequence[Path], timeout: float = 600
) -> AgentRun:
    """Run ``leukonet agent run`` (OpenVINO, CPU, FP32 set explicitly) over ``inputs``.

    The inputs are staged first and moved into the watch folder once the agent is ready; the run
    ends when the outbox holds one row per input (bounded by ``timeout``).
    """
    names = [p.name for p in inputs]
    assert len(set(names)) == len(names), "input names must be unique (results are keyed by name)"
    watch, state, staging = tmp / "watch", tmp / "state", tmp / "staging"
    for d in (watch, staging):
        d.mkdir(parents=True)
    for p in inputs:
        shutil.copy(p, staging / p.name)
    cfg = tmp / "agent.yaml"
    cfg.write_text(
        f"agent_id: cells-e2e\nwatch_dir: {watch}\nstate_dir: {state}\nbackend: openvino\n"
        f"device: CPU\nprecision: FP32\nmodel_public_key: {public_key}\n"
        f"initial_model: {bundle}\npoll_interval_s: 0.02\nsettle_s: 0\nstatus_interval_s: 3600\n"
        f"log_level: INFO\nmqtt: {{port: {free_port()}, reconnect_min_s: 30, reconnect_max_s: 60}}\n"
    )
    ready, log_path = tmp / "ready", tmp / "agent.log"
    env = dict(os.environ, **_CHILD_ENV)
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
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.monotonic() < deadline, "agent did not become ready in 120 s"
            time.sleep(0.05)
        t0 = time.time()
        for p in inputs:
            os.replace(staging / p.name, watch / p.name)
        db = sqlite3.connect(str(state / "outbox.sqlite3"))
        try:
            deadline = time.monotonic() + timeout
            while True:
                (n,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
                if n >= len(inputs):
                    break
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, f"only {n} of {len(inputs)} results after {timeout} s"
                time.sleep(0.1)
            (last,) = db.execute("SELECT MAX(created_at) FROM outbox").fetchone()
            payloads = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox")]
        finally:
            db.close()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    results = {p["image_name"]: p for p in payloads}
    missing = set(names) - set(results)
    assert not missing, f"no result for {sorted(missing)[:5]}; agent log: {log_path}"
    precisions = {f"{p.get('precision')}/{p.get('execution_precision')}" for p in payloads}
    return AgentRun(results=results, seconds=float(last) - t0, precision=",".join(sorted(precisions)))


# --- figures --------------------------------------------------------------------------------------


def field_metrics(
    truth: dict[str, str], predicted: dict[str, str], positive: str = "ALL"
) -> dict[str, float]:
    """Field-level sensitivity and specificity of ``predicted`` labels against ``truth`` (by name)."""
    tp = sum(1 for n, t in truth.items() if t == positive and predicted[n] == positive)
    fn = sum(1 for n, t in truth.items() if t == positive and predicted[n] != positive)
    tn = sum(1 for n, t in truth.items() if t != positive and predicted[n] != positive)
    fp = sum(1 for n, t in truth.items() if t != positive and predicted[n] == positive)
    return {
        "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "tp": tp,
        "fn": fn,
        "tn": tn,
        "fp": fp,
    }


def flag_share(results: dict[str, dict[str, Any]], names: Iterable[str]) -> tuple[float, int, int]:
    """(share flagged unfamiliar, flagged, total) over the results of ``names``."""
    names = list(names)
    flagged = sum(1 for n in names if results[n]["unfamiliar"])
    return flagged / len(names), flagged, len(names)
