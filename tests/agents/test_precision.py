"""Precision is explicit: the configured one is hinted to OpenVINO, read back, and held to its tolerance.

These tests pass on CPUs with and without bf16 kernels (AMX / AVX512-BF16). Where the CPU has them,
OpenVINO's own default is bf16, so the FP32 tests prove the hint is applied; the BF16 tests force
bf16 and show the difference is detected. Without bf16 they show BF16 is refused with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import pytest

from agents.backends import BackendError, IrPrecision, create_backend
from agents.backends.precision import (
    HINT,
    PrecisionError,
    check_read_back,
    compile_config,
    probe,
    read_back,
)
from agents.models import ModelError, ModelManager
from shared.bundle import load_public_key, verify_bundle
from shared.preprocessing import crop_and_resize
from tests.agents.helpers import BLUE, RED, SIZE, Keys, image, make_bundle, make_keys, reference_probabilities

CORE = ov.Core()
CPU_CAPS = [str(c) for c in CORE.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
HAS_BF16 = "BF16" in CPU_CAPS
HAS_FP16 = "FP16" in CPU_CAPS
BF16_PARITY = {"max_abs_diff_bf16": 1e-4, "tolerance_bf16": 3e-2}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | Keys]:
    folder = tmp_path_factory.mktemp("precision")
    keys = make_keys(folder)
    return {
        "keys": keys,
        "plain": make_bundle(folder, keys, "1.0.0")[0],
        "bf16": make_bundle(folder, keys, "2.0.0", parity=BF16_PARITY)[0],
        # A tolerance no rounding can meet: any bf16 difference on the reference image is caught.
        "bf16_tight": make_bundle(folder, keys, "3.0.0", parity={**BF16_PARITY, "tolerance_bf16": 1e-12})[0],
    }


def loaded(bundle: Path, keys: Keys, dest: Path, precision: IrPrecision, device: str = "CPU"):
    manifest = verify_bundle(bundle, load_public_key(keys.public), dest)
    backend = create_backend("openvino", device, precision)
    backend.load(dest, manifest)
    return backend


def crops_and_expected() -> tuple[np.ndarray, np.ndarray]:
    images = [image(BLUE if i % 2 == 0 else RED, seed=i) for i in range(6)]
    crops = np.stack([crop_and_resize(im, SIZE) for im in images])
    return crops, np.array([reference_probabilities(im, flip=False) for im in images])


def test_the_cpu_default_is_what_the_hint_overrides():
    """Documents the hazard: without a hint the CPU plugin runs its own default (bf16 where it can)."""
    got = probe(CORE, ov, "CPU", "FP32")
    assert got == "f32"
    assert compile_config(CORE, "CPU", "FP32") == {HINT: "f32"}
    assert compile_config(CORE, "AUTO", "FP32") == {"DEVICE_PROPERTIES": {"CPU": {HINT: "f32"}}}
    assert compile_config(CORE, "AUTO:CPU", "INT8") == {"DEVICE_PROPERTIES": {"CPU": {HINT: "f32"}}}


@pytest.mark.parametrize("device", ["CPU", "AUTO", "AUTO:CPU"])
def test_fp32_runs_f32_on_every_cpu(tmp_path, bundles, device):
    backend = loaded(bundles["plain"], bundles["keys"], tmp_path / "m", "FP32", device)
    assert backend.precision == "FP32"
    assert backend.execution_precision == "f32"
    crops, expected = crops_and_expected()
    np.testing.assert_allclose(backend.infer(crops), expected, atol=1e-5)
    backend.close()


def test_fp16_never_becomes_bf16_on_a_cpu_without_fp16_kernels(tmp_path, bundles):
    backend = loaded(bundles["plain"], bundles["keys"], tmp_path / "m", "FP16")
    # An x86 CPU maps an f16 hint to bf16 when it has bf16 but no FP16 kernels: never passed there.
    assert backend.execution_precision == ("f16" if HAS_FP16 else "f32")
    assert compile_config(CORE, "CPU", "FP16") == {HINT: "f16" if HAS_FP16 else "f32"}
    backend.close()


def test_bf16_needs_the_bundles_bf16_parity_figure(tmp_path, bundles):
    backend = create_backend("openvino", "CPU", "BF16")
    manifest = verify_bundle(bundles["plain"], load_public_key(bundles["keys"].public), tmp_path / "m")
    with pytest.raises(BackendError, match=r"no BF16 parity figure .*set precision\s+to FP32"):
        backend.load(tmp_path / "m", manifest)


def test_forced_bf16_is_detected_or_refused(tmp_path, bundles):
    """Where the CPU has bf16: BF16 runs bf16, differs from FP32, and a tolerance it misses refuses
    the model. Where it has not: BF16 is refused naming the missing capability."""
    if not HAS_BF16:
        with pytest.raises(PrecisionError, match="no bf16 support.*set precision to FP32"):
            loaded(bundles["bf16"], bundles["keys"], tmp_path / "m", "BF16")
        with pytest.raises(PrecisionError, match="no bf16 support"):
            probe(CORE, ov, "CPU", "BF16")
        return
    bf16 = loaded(bundles["bf16"], bundles["keys"], tmp_path / "m", "BF16")
    fp32 = loaded(bundles["bf16"], bundles["keys"], tmp_path / "m2", "FP32")
    assert (bf16.precision, bf16.execution_precision) == ("BF16", "bf16")
    crops, expected = crops_and_expected()
    got_bf16, got_fp32 = bf16.infer(crops), fp32.infer(crops)
    assert np.abs(got_bf16 - got_fp32).max() > 0, "bf16 ran but gave FP32's exact answers"
    np.testing.assert_allclose(got_bf16, expected, atol=3e-2)
    bf16.close()
    fp32.close()
    # A model compiled without the hint runs bf16 here, and the FP32 read-back check refuses it.
    unhinted = CORE.compile_model(CORE.read_model(str(tmp_path / "m" / "ir/fp32/model.xml")), "CPU")
    assert read_back(unhinted, "CPU") == "bf16"
    with pytest.raises(PrecisionError, match="runs bf16 where precision FP32 needs f32"):
        check_read_back("FP32", read_back(unhinted, "CPU"), "CPU")
    # The smoke test holds BF16 to the bundle's own tolerance: missed, the model is refused.
    manager = ModelManager(
        agent_id="a1",
        state_dir=tmp_path / "state",
        make_backend=lambda: create_backend("openvino", "CPU", "BF16"),
        public_key_path=bundles["keys"].public,
        precision="BF16",
    )
    with pytest.raises(ModelError, match=r"smoke test failed: .*\(BF16 IR\).* > 1e-12"):
        manager.install_bundle(bundles["bf16_tight"])
    active = manager.install_bundle(bundles["bf16"])
    assert active.backend.execution_precision == "bf16"
    manager.close()


@pytest.mark.parametrize(
    ("precision", "got", "ok"),
    [
        ("FP32", "f32", True),
        ("FP32", "bf16", False),
        ("FP32", "CPU:f32,GPU:f16", False),
        ("FP16", "f16", True),
        ("FP16", "f32", True),
        ("FP16", "bf16", False),
        ("BF16", "bf16", True),
        ("BF16", "f32", False),
        ("INT8", "f32", True),
        ("FP32", "", True),  # the device cannot say (NCS2 on 2022.3): the smoke test holds it
    ],
)
def test_read_back_rules(precision, got, ok):
    if ok:
        check_read_back(precision, got, "X")
    else:
        with pytest.raises(PrecisionError, match=f"device 'X' runs {got} where precision {precision}"):
            check_read_back(precision, got, "X")


class CoreReporting:
    """A stand-in for ``openvino.Core`` that reports chosen device capabilities: the hint rules are
    exercised for CPUs with and without bf16 / FP16 kernels, whatever CPU runs the suite."""

    def __init__(self, caps: dict[str, list[str]], hint_devices: set[str]) -> None:
        self.caps = caps
        self.hint_devices = hint_devices
        self.available_devices = list(caps)

    def get_property(self, device: str, name: str):
        if name == "OPTIMIZATION_CAPABILITIES":
            return self.caps[device]
        if name == "SUPPORTED_PROPERTIES":
            return [HINT] if device in self.hint_devices else ["FULL_DEVICE_NAME"]
        raise RuntimeError(name)


AVX2_CPU = {"CPU": ["WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"]}
BF16_CPU = {"CPU": ["BF16", "WINOGRAD", "FP32", "INT8", "BIN", "EXPORT_IMPORT"]}
GPU_BOX = {"CPU": AVX2_CPU["CPU"], "GPU": ["FP32", "FP16", "INT8"], "MYRIAD": ["FP16"]}


@pytest.mark.parametrize(
    ("caps", "precision", "expected"),
    [
        (AVX2_CPU, "FP32", {HINT: "f32"}),
        (AVX2_CPU, "FP16", {HINT: "f32"}),  # no FP16 kernels: the FP16 IR runs at f32, never bf16
        (AVX2_CPU, "INT8", {HINT: "f32"}),
        (BF16_CPU, "FP32", {HINT: "f32"}),
        (BF16_CPU, "FP16", {HINT: "f32"}),
        (BF16_CPU, "BF16", {HINT: "bf16"}),
    ],
)
def test_cpu_hints_with_and_without_bf16(caps, precision, expected):
    assert compile_config(CoreReporting(caps, {"CPU"}), "CPU", precision) == expected


def test_bf16_is_refused_on_a_cpu_without_it():
    with pytest.raises(PrecisionError, match="no bf16 support .*set precision to FP32"):
        compile_config(CoreReporting(AVX2_CPU, {"CPU"}), "CPU", "BF16")


def test_virtual_devices_hint_each_candidate_and_skip_those_without_the_property():
    core = CoreReporting(GPU_BOX, {"CPU", "GPU"})  # MYRIAD (OpenVINO 2022.3) takes no hint
    assert compile_config(core, "AUTO", "FP16") == {
        "DEVICE_PROPERTIES": {"CPU": {HINT: "f32"}, "GPU": {HINT: "f16"}}
    }
    assert compile_config(core, "AUTO:GPU,CPU", "FP32") == {
        "DEVICE_PROPERTIES": {"GPU": {HINT: "f32"}, "CPU": {HINT: "f32"}}
    }
    assert compile_config(core, "MYRIAD", "FP16") == {}
    # BF16 under AUTO: only the devices that have it; none has it here, so it is refused
    with pytest.raises(PrecisionError, match="no device of 'AUTO' can run precision BF16"):
        compile_config(core, "AUTO", "BF16")
    with_bf16 = CoreReporting({**GPU_BOX, "CPU": BF16_CPU["CPU"]}, {"CPU", "GPU"})
    assert compile_config(with_bf16, "AUTO:CPU,GPU", "BF16") == {"DEVICE_PROPERTIES": {"CPU": {HINT: "bf16"}}}
