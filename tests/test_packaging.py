"""Role extras: an agent install must not pull TensorFlow (or the hub's web stack).

The resolution is checked here with uv (fast, no install); `.ci/run` also does a real
`pip install .[agent]` in a fresh venv and checks `pip list`.
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def resolve(extra: str) -> set[str]:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not installed in the venv; run `make venv`")
    out = subprocess.run(
        [uv, "pip", "compile", str(ROOT / "pyproject.toml"), "--extra", extra, "--python-version", "3.11",
         "-q", "--no-header", "--override", str(ROOT / "overrides.txt")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert out.returncode == 0, out.stderr
    return {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", out.stdout, re.M)}


def test_agent_extra_has_no_tensorflow_or_web_stack():
    pkgs = resolve("agent")
    assert "openvino" in pkgs and "paho-mqtt" in pkgs
    forbidden = {"tf-slim", "keras", "flask", "sqlalchemy"}
    assert not {p for p in pkgs if p.startswith("tensorflow") or p in forbidden}


def test_trainer_extra_keeps_the_pinned_stack():
    pkgs = resolve("trainer")
    assert {"tensorflow-cpu", "tf-slim", "openvino"} <= pkgs
    code = "import numpy, cv2; print(numpy.__version__, cv2.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    numpy_v, cv_v = out.stdout.split()
    assert tuple(map(int, numpy_v.split(".")[:2])) <= (1, 24), "TensorFlow 2.12 needs numpy <= 1.24.3"
    assert tuple(map(int, cv_v.split(".")[:2])) < (4, 12), "opencv 4.12+ pulls numpy 2"
