"""The optional INT8 IR: loaded only when asked, FP32 when a bundle has none, refused on the NCS2.

The quantized bundles carry the tiny FP32 IR quantized by the trainer's own NNCF step; the
"swapped" one carries the other colour rule's IR as ``ir_int8``, so its answers show which IR ran
and that the reference smoke test still rejects a wrong INT8 model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agents.backends import BackendError, IrPrecision, create_backend
from agents.cli import cli
from agents.models import ModelError, ModelManager
from shared.bundle import Manifest, load_public_key, verify_bundle
from shared.logs import parse_kv
from shared.preprocessing import crop_and_resize
from tests.agents.helpers import (
    BLUE,
    INT8_XML,
    RED,
    SIZE,
    Keys,
    image,
    make_bundle,
    make_keys,
    reference_image,
    reference_probabilities,
    write_png,
)

# The reference probabilities shifted by 2e-2: within INT8's tolerance (5e-2), far outside FP32's (1e-3).
REF = reference_probabilities(reference_image(), flip=False)
REF_OFF_BY_2E2 = [REF[0] - 0.02, REF[1] + 0.02]


@dataclass
class Bundles:
    keys: Keys
    quantized: Path  # ir_int8 = NNCF-quantized FP32 IR
    plain: Path  # no ir_int8
    swapped: Path  # ir_int8 = the other colour rule's IR (a wrong model)
    quantized_off: Path  # quantized, reference probabilities off by 2e-2
    plain_off: Path  # no ir_int8, reference probabilities off by 2e-2


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    folder = tmp_path_factory.mktemp("int8")
    keys = make_keys(folder)
    return Bundles(
        keys=keys,
        quantized=make_bundle(folder, keys, "1.0.0", int8="nncf")[0],
        plain=make_bundle(folder, keys, "2.0.0")[0],
        swapped=make_bundle(folder, keys, "3.0.0", int8="swapped")[0],
        quantized_off=make_bundle(folder, keys, "4.0.0", int8="nncf", reference_probs=REF_OFF_BY_2E2)[0],
        plain_off=make_bundle(folder, keys, "5.0.0", reference_probs=REF_OFF_BY_2E2)[0],
    )


def extract(bundle: Path, keys: Keys, dest: Path) -> tuple[Path, Manifest]:
    return dest, verify_bundle(bundle, load_public_key(keys.public), dest)


def batch() -> tuple[np.ndarray, np.ndarray]:
    """Bluish and reddish crops and what the FP32 IR (flip=False) gives for them."""
    images = [image(BLUE if i % 2 == 0 else RED, seed=i) for i in range(4)]
    crops = np.stack([crop_and_resize(im, SIZE) for im in images])
    return crops, np.array([reference_probabilities(im, flip=False) for im in images])


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[tuple[int, dict[str, str]]]:
    found = []
    for record in caplog.records:
        name, fields = parse_kv(record.getMessage())
        if name == event:
            found.append((record.levelno, fields))
    return found


def op_types(xml: Path) -> set[str]:
    import openvino as ov

    return {op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops()}


def test_int8_precision_loads_the_quantized_ir(tmp_path, bundles, caplog):
    caplog.set_level(logging.INFO, logger="agents")
    model_dir, manifest = extract(bundles.quantized, bundles.keys, tmp_path / "m")
    backend = create_backend("openvino", device="CPU", precision="INT8")
    backend.load(model_dir, manifest)
    assert backend.precision == "INT8"
    [(_, compiled)] = logged(caplog, "model_compiled")
    assert (compiled["ir"], compiled["precision"]) == (str(model_dir / INT8_XML), "INT8")
    assert "FakeQuantize" in op_types(Path(compiled["ir"]))  # the NNCF IR, not FP32 renamed
    assert logged(caplog, "ir_precision_fallback") == []
    crops, fp32 = batch()
    got = backend.infer(crops)
    np.testing.assert_allclose(got, fp32, atol=5e-2)
    assert list(got.argmax(axis=1)) == [0, 1, 0, 1]
    backend.close()

    fp32_backend = create_backend("openvino", device="CPU", precision="FP32")  # INT8 only when asked
    fp32_backend.load(model_dir, manifest)
    assert fp32_backend.precision == "FP32"
    assert "FakeQuantize" not in op_types(model_dir / manifest.artifacts["ir_fp32"])
    fp32_backend.close()


def test_the_int8_artifact_is_what_runs(tmp_path, bundles):
    model_dir, manifest = extract(bundles.swapped, bundles.keys, tmp_path / "m")
    crops, fp32 = batch()
    outputs = {}
    for precision in ("FP32", "INT8"):
        backend = create_backend("openvino", device="CPU", precision=precision)
        backend.load(model_dir, manifest)
        outputs[precision] = backend.infer(crops)
        backend.close()
    np.testing.assert_allclose(outputs["FP32"], fp32, atol=1e-5)
    np.testing.assert_allclose(outputs["INT8"], fp32[:, ::-1], atol=1e-5)  # the swapped IR's answers


def test_a_bundle_without_int8_runs_fp32_with_a_warning(tmp_path, bundles, caplog):
    caplog.set_level(logging.INFO, logger="agents")
    model_dir, manifest = extract(bundles.plain, bundles.keys, tmp_path / "m")
    backend = create_backend("openvino", device="CPU", precision="INT8")
    backend.load(model_dir, manifest)
    assert backend.precision == "FP32"
    [(level, fallback)] = logged(caplog, "ir_precision_fallback")
    assert level == logging.WARNING
    assert (fallback["wanted"], fallback["using"], fallback["version"]) == ("INT8", "ir_fp32", "2.0.0")
    [(_, compiled)] = logged(caplog, "model_compiled")
    assert (compiled["ir"], compiled["precision"]) == (str(model_dir / "ir/fp32/model.xml"), "FP32")
    crops, fp32 = batch()
    np.testing.assert_allclose(backend.infer(crops), fp32, atol=1e-5)
    backend.close()


def test_the_backend_refuses_int8_on_myriad():
    with pytest.raises(BackendError, match="NCS2 runs FP16 only"):
        create_backend("openvino", device="MYRIAD", precision="INT8")


def manager(state_dir: Path, keys: Keys, precision: IrPrecision) -> ModelManager:
    return ModelManager(
        agent_id="a1",
        state_dir=state_dir,
        make_backend=lambda: create_backend("openvino", "CPU", precision),
        public_key_path=keys.public,
        precision=precision,
    )


def test_the_reference_tolerance_follows_the_ir_that_runs(tmp_path, bundles, caplog):
    caplog.set_level(logging.INFO, logger="agents")
    int8 = manager(tmp_path / "int8", bundles.keys, "INT8")
    active = int8.install_bundle(bundles.quantized_off)  # 2e-2 off passes INT8's 5e-2
    assert active.backend.precision == "INT8"
    [(_, passed)] = logged(caplog, "smoke_test_passed")
    assert passed["precision"] == "INT8"
    # Asked for INT8 but the bundle has none: FP32 runs, and is held to FP32's 1e-3.
    with pytest.raises(ModelError, match=r"smoke test failed: leukonet-tiny 5\.0\.0 \(FP32 IR\)"):
        int8.install_bundle(bundles.plain_off)
    assert int8.active is not None and int8.active.version == "4.0.0"
    int8.close()

    fp32 = manager(tmp_path / "fp32", bundles.keys, "FP32")
    with pytest.raises(ModelError, match=r"\(FP32 IR\).*> 0\.001"):
        fp32.install_bundle(bundles.quantized_off)
    fp32.close()


def test_a_wrong_int8_ir_fails_the_smoke_test_and_keeps_the_current_model(tmp_path, bundles):
    mm = manager(tmp_path, bundles.keys, "INT8")
    assert mm.install_bundle(bundles.quantized).backend.precision == "INT8"
    with pytest.raises(ModelError) as err:
        mm.install_bundle(bundles.swapped)
    assert "smoke test failed: leukonet-tiny 3.0.0 (INT8 IR)" in str(err.value)
    assert "> 0.05" in str(err.value) and "set precision to FP32" in str(err.value)
    assert mm.active is not None and mm.active.version == "1.0.0"
    assert mm.active.backend.precision == "INT8"
    mm.close()


@pytest.mark.parametrize(("bundle", "precision"), [("quantized", "INT8"), ("plain", "FP32")])
def test_cli_classify_accepts_precision_int8_and_reports_the_ir_run(tmp_path, bundles, bundle, precision):
    blue, red = write_png(tmp_path / "b.png", BLUE), write_png(tmp_path / "r.png", RED)
    res = CliRunner().invoke(
        cli,
        [
            "classify",
            "--bundle",
            str(getattr(bundles, bundle)),
            "--public-key",
            str(bundles.keys.public),
            "--device",
            "CPU",
            "--precision",
            "INT8",
            str(blue),
            str(red),
        ],
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.output.splitlines() if x.startswith("{")]
    assert [(x["label"], x["precision"], x["device"]) for x in lines] == [
        ("ALL", precision, "CPU"),
        ("normal", precision, "CPU"),
    ]


def test_cli_refuses_int8_on_myriad(tmp_path, bundles):
    png = write_png(tmp_path / "b.png", BLUE)
    res = CliRunner().invoke(
        cli,
        [
            "classify",
            "--bundle",
            str(bundles.quantized),
            "--public-key",
            str(bundles.keys.public),
            "--device",
            "MYRIAD",
            "--precision",
            "INT8",
            str(png),
        ],
    )
    assert res.exit_code == 1 and "the NCS2 runs FP16 only" in res.output

    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"agent_id: a1\nwatch_dir: {tmp_path}\ndevice: MYRIAD\nprecision: INT8\n")
    res = CliRunner().invoke(cli, ["run", "--config", str(cfg)])
    assert res.exit_code == 2
    assert "precision:" in res.output and "the NCS2 runs FP16 only" in res.output
