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
        [
            uv,
            "pip",
            "compile",
            str(ROOT / "pyproject.toml"),
            "--extra",
            extra,
            "--python-version",
            "3.11",
            "-q",
            "--no-header",
            "--override",
            str(ROOT / "overrides.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
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


def _lock() -> dict[str, tuple[str, int]]:
    """requirements.lock as name -> (version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line):
            name = m.group(1).lower().replace("_", "-")
            pins[name] = (m.group(2), 0)
        elif "--hash=sha256:" in line and name:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def test_the_lock_satisfies_every_requirement_and_pins_with_hashes():
    """`make venv` installs requirements.lock only: it must hold every role's requirements, hashed,
    with the overrides applied (run `make lock` after changing pyproject.toml)."""
    import tomllib
    from packaging.requirements import Requirement

    pins = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements += [r for r in extra if not r.startswith("leukonet")]
    overridden = {
        Requirement(r).name.lower()
        for r in (ROOT / "overrides.txt").read_text().splitlines()
        if r.strip() and not r.startswith("#")
    }
    missing, wrong = [], []
    for text in requirements:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        if name not in pins:
            missing.append(text)
        elif name not in overridden and not req.specifier.contains(pins[name][0], prereleases=True):
            wrong.append(f"{text} (locked {pins[name][0]})")
    stale = f"requirements.lock is stale: missing {missing}, outside {wrong}; run make lock"
    assert not missing and not wrong, stale
    assert all(hashes > 0 for _, hashes in pins.values()), "every pin needs its hashes (make lock)"
    for r in (ROOT / "overrides.txt").read_text().splitlines():
        if r.strip() and not r.startswith("#"):
            req = Requirement(r)
            assert req.specifier.contains(pins[req.name.lower()][0]), f"override {r} not applied in the lock"
