"""Inference precision made explicit: which hint each device gets, and what it really runs.

OpenVINO's CPU plugin defaults ``INFERENCE_PRECISION_HINT`` to bf16 on CPUs with AMX / AVX512-BF16,
so a model left to the default does not run the precision the trainer validated. Every compile
therefore passes the hint for the configured precision to each physical device that lists the
property, and reads back what the compiled model reports:

* ``FP32`` -> ``f32`` (the FP32 IR);
* ``FP16`` -> ``f16`` on devices with FP16 kernels (GPU, NPU), ``f32`` on the others. An x86 CPU
  without AMX-FP16 maps an ``f16`` hint to bf16 silently (seen with OpenVINO 2026.4), and the
  FP16 IR at f32 is exactly what the trainer's FP16 parity figure measures;
* ``BF16`` -> ``bf16`` (the FP32 IR), only on devices that report the ``BF16`` capability;
* ``INT8`` -> ``f32`` for the layers NNCF left unquantized, as the trainer measured it.

A compiled model whose read-back precision is not one the configured precision allows is
refused (:class:`PrecisionError`), naming the device, what was asked and what it runs.
Devices or OpenVINO versions that cannot report it (the NCS2 on 2022.3) report ``""``.
"""

from __future__ import annotations

from typing import Any

from agents.backends.base import BackendError, IrPrecision

HINT = "INFERENCE_PRECISION_HINT"
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")

#: Read-back precisions accepted for each configured precision.
ALLOWED: dict[IrPrecision, tuple[str, ...]] = {
    "FP32": ("f32",),
    "FP16": ("f16", "f32"),
    "BF16": ("bf16",),
    "INT8": ("f32",),
}


class PrecisionError(BackendError):
    """The device cannot run the configured precision; the message says why and what to set."""


def base_devices(device: str) -> list[str]:
    """Physical device names in ``device``: ``AUTO:GPU,CPU`` -> [GPU, CPU]; ``GPU.1`` -> [GPU.1]."""
    head, _, rest = device.partition(":")
    if head.upper() in VIRTUAL_DEVICES:
        return [d.strip() for d in rest.split(",") if d.strip()]
    return [device]


def is_virtual(device: str) -> bool:
    return device.partition(":")[0].upper() in VIRTUAL_DEVICES


def _capabilities(core: Any, device: str) -> list[str]:
    try:
        return [str(c).upper() for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]
    except RuntimeError:
        return []


def _takes_hint(core: Any, device: str) -> bool:
    try:
        return HINT in [str(p) for p in core.get_property(device, "SUPPORTED_PROPERTIES")]
    except RuntimeError:
        return False


def device_hint(core: Any, device: str, precision: IrPrecision) -> str | None:
    """The hint for one physical ``device``; None when it takes none (then it is not passed).

    Raises:
        PrecisionError: ``BF16`` on a device without bf16 kernels.
    """
    if not _takes_hint(core, device):
        if precision == "BF16":
            raise PrecisionError(
                f"precision BF16 cannot run on device {device!r}: it takes no inference precision hint; "
                "set precision to FP32"
            )
        return None
    caps = _capabilities(core, device)
    if precision == "BF16":
        if "BF16" not in caps:
            raise PrecisionError(
                f"precision BF16 cannot run on device {device!r}: it has no bf16 support "
                f"(capabilities {', '.join(caps) or 'unknown'}); set precision to FP32"
            )
        return "bf16"
    if precision == "FP16":
        return "f16" if "FP16" in caps else "f32"
    return "f32"


def compile_config(core: Any, device: str, precision: IrPrecision) -> dict[str, Any]:
    """The precision part of ``compile_model``'s config for ``device`` (physical or virtual).

    A virtual device gets one ``DEVICE_PROPERTIES`` entry per candidate (all available devices for
    a bare ``AUTO``), so each device it may pick runs the configured precision.

    Raises:
        PrecisionError: no candidate device can run ``precision``.
    """
    if not is_virtual(device):
        hint = device_hint(core, device, precision)
        return {HINT: hint} if hint else {}
    candidates = base_devices(device) or [str(d) for d in core.available_devices]
    per_device: dict[str, dict[str, str]] = {}
    refusals: list[str] = []
    for name in candidates:
        try:
            hint = device_hint(core, name, precision)
        except PrecisionError as exc:
            refusals.append(str(exc))
            continue
        if hint:
            per_device[name] = {HINT: hint}
    if refusals and len(refusals) == len(candidates):
        raise PrecisionError(f"no device of {device!r} can run precision {precision}: {'; '.join(refusals)}")
    return {"DEVICE_PROPERTIES": per_device} if per_device else {}


def _type_name(value: Any) -> str:
    name = getattr(value, "get_type_name", None)
    return str(name()) if callable(name) else str(value)


def read_back(compiled: Any, device: str) -> str:
    """The inference precision the compiled model runs, e.g. ``f32`` or ``CPU:bf16,GPU:f16``.

    ``""`` when the device or OpenVINO version cannot report it.
    """
    try:
        if not is_virtual(device):
            return _type_name(compiled.get_property(HINT))
        per_device = compiled.get_property("DEVICE_PROPERTIES")
    except RuntimeError:
        return ""
    found = {
        str(name): _type_name(props[HINT])
        for name, props in dict(per_device).items()
        if isinstance(props, dict) and HINT in props
    }
    if len(set(found.values())) == 1:
        return next(iter(found.values()))
    return ",".join(f"{name}:{p}" for name, p in sorted(found.items()))


def check_read_back(precision: IrPrecision, got: str, device: str) -> None:
    """Refuse a compiled model that runs another precision than ``precision`` allows.

    Raises:
        PrecisionError: naming the device, what was configured and what it runs.
    """
    if not got:
        return  # the device cannot say; the smoke test against the reference still holds it
    runs = [part.rpartition(":")[2] for part in got.split(",")]
    wrong = [p for p in runs if p not in ALLOWED[precision]]
    if wrong:
        raise PrecisionError(
            f"device {device!r} runs {got} where precision {precision} needs "
            f"{' or '.join(ALLOWED[precision])}: this device cannot run the validated precision; "
            "choose another device or precision"
        )


def probe(core: Any, ov: Any, device: str, precision: IrPrecision) -> str:
    """Compile a one-layer network on ``device`` the way a model would be and read its precision back.

    For ``leukonet agent check``: shows what the device will execute before any bundle is installed.

    Raises:
        PrecisionError: the device would not run ``precision`` (see :func:`check_read_back`).
    """
    import numpy as np

    opset = getattr(ov, "opset8", None)
    if opset is None:  # OpenVINO 2022.3 keeps the opsets under openvino.runtime
        import openvino.runtime as ov_runtime

        opset = ov_runtime.opset8
    x = opset.parameter([1, 8], ov.Type.f32, name="x")
    weights = opset.constant(np.eye(8, 2, dtype=np.float32))
    model = ov.Model([opset.softmax(opset.matmul(x, weights, False, False), 1)], [x], "precision_probe")
    compiled = core.compile_model(model, device, compile_config(core, device, precision))
    got = read_back(compiled, device)
    check_read_back(precision, got, device)
    return got
