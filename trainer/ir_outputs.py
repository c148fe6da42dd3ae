"""The IR's outputs: ``probabilities`` first, ``features`` second, also across INT8 quantization.

:func:`ordered_outputs` puts the converted graph's outputs in the contract's order (the TF frontend
orders them its own way).

:func:`trainer.int8.quantize_int8` holds an IR to the one-output contract (``probabilities``), while
the exported FP32 IR also gives the pre-logits ``features`` that agents score for the unfamiliar
flag, and an agent refuses a model whose IR lacks the output the manifest's ``ood`` section names.
So the INT8 IR is quantized from :func:`probabilities_only_ir`'s copy, and
:func:`add_features_output` then taps the same tensor in the quantized graph (the pooled
activations the logits layer reads, found by the name OpenVINO gave it in the FP32 IR) as a second
output named ``features``: features of the INT8 network, as an agent running INT8 computes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainer.freeze import FEATURES_NAME, OUTPUT_NAME


def ordered_outputs(model: Any) -> Any:
    """``model`` (an ``openvino.Model``) with ``probabilities`` as output 0 and ``features`` (if
    any) as output 1.

    Raises:
        ValueError: the model has no ``probabilities`` output.
    """
    import openvino as ov

    def named(name: str) -> Any | None:
        for result in model.get_results():
            if any(n.split(":")[0] == name for n in result.output(0).get_names()):
                return result
        return None

    probs, feats = named(OUTPUT_NAME), named(FEATURES_NAME)
    if probs is None:
        raise ValueError(f"the frozen graph has no {OUTPUT_NAME!r} output; freeze it with trainer.freeze")
    results = [probs] if feats is None else [probs, feats]
    return ov.Model(results, model.get_parameters(), model.get_friendly_name())


def probabilities_only_ir(fp32_xml: Path, out_xml: Path) -> Path:
    """A copy of the IR ``fp32_xml`` with its first output (``probabilities``) only, FP32 weights kept."""
    import openvino as ov

    model = ov.Core().read_model(str(fp32_xml))
    single = ov.Model([model.get_results()[0]], model.get_parameters(), model.get_friendly_name())
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(single, str(out_xml), compress_to_fp16=False)
    return out_xml


def add_features_output(int8_xml: Path, fp32_xml: Path) -> bool:
    """Give the quantized IR ``int8_xml`` the ``features`` output that ``fp32_xml`` has (in place).

    The quantizer's ``rt_info`` (NNCF's record) is kept. Returns False, changing nothing, when the
    FP32 IR has no ``features`` output (exported before it existed).

    Raises:
        ValueError: the tensor the FP32 features come from is not in the quantized graph.
    """
    import openvino as ov
    import openvino.opset13 as ops

    core = ov.Core()
    fp32 = core.read_model(str(fp32_xml))
    tapped = [r for r in fp32.get_results() if FEATURES_NAME in r.output(0).get_names()]
    if not tapped:
        return False
    source = tapped[0].input_value(0).get_node().input_value(0)  # the Reshape's input
    name = source.get_node().get_friendly_name()
    model = core.read_model(str(int8_xml))
    found = [op for op in model.get_ops() if op.get_friendly_name() == name]
    if not found:
        raise ValueError(
            f"{int8_xml}: the quantized graph has no {name!r}, where {fp32_xml}'s features come from; "
            "ship the model without --int8 and report the NNCF version"
        )
    flat = ops.reshape(
        found[0].output(source.get_index()), ops.constant(np.array([1, -1], np.int64)), special_zero=False
    )
    flat.output(0).get_tensor().set_names({FEATURES_NAME})
    model.add_results([ops.result(flat)])
    tmp = int8_xml.with_name(f".{int8_xml.stem}.tmp.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    tmp.replace(int8_xml)
    tmp.with_suffix(".bin").replace(int8_xml.with_suffix(".bin"))
    return True
