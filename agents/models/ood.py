"""The out-of-distribution statistics a model brings: loaded with the model, from its verified folder.

A manifest with an ``ood`` section names a bundle file (``ood.stats_file``, listed in the signed
manifest's digests, so it was verified with the rest of the folder) holding the statistics of the
training images' pre-logits features (:mod:`shared.ood`). The model manager loads it next to the
backend; a missing or corrupt file refuses the model like any corrupt bundle file.
"""

from __future__ import annotations

from pathlib import Path

from agents.models.errors import ModelError
from shared.bundle import Manifest
from shared.ood import OodModel


def load_ood(model_dir: Path, manifest: Manifest, precision: str | None = None) -> OodModel | None:
    """The OOD statistics of ``manifest``'s model in ``model_dir``; None without an ``ood`` section.

    Raises:
        ModelError: the file is missing, unreadable or does not match ``ood.feature_dim``; or the
            model runs at ``precision`` INT8 and the trainer measured that the unfamiliar flag does
            not hold on its INT8 IR (``metrics.int8.ood_flag_validated`` false: quantization clips
            the activations of unlike inputs to the smears' ranges, so they look familiar). The
            model must not be loaded: a flag that cannot fire would report strange inputs as
            confident negatives.
    """
    spec = manifest.ood
    if spec is None:
        return None
    int8 = manifest.metrics.get("int8")
    if precision == "INT8" and isinstance(int8, dict) and int8.get("ood_flag_validated") is False:
        raise ModelError(
            f"bundle {manifest.name} {manifest.version}: its unfamiliar flag does not hold on the INT8 IR "
            f"(the trainer measured it: metrics.int8 {int8.get('probe_flag_rate_int8')} of unlike inputs "
            f"flagged against {int8.get('probe_flag_rate_fp32')} at FP32); run it at FP32 or FP16 "
            "(precision in agent.yaml)"
        )
    try:
        return OodModel.load(model_dir / spec.stats_file, spec)
    except ValueError as exc:  # shared.ood.OodError
        raise ModelError(
            f"bundle {manifest.name} {manifest.version}: its OOD statistics {spec.stats_file} cannot be "
            f"used ({exc}); the model is not loaded: re-export the bundle with the trainer"
        ) from exc
