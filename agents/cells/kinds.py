"""Which kind of input an image is for the active model, and the refusal of a kind it does not take."""

from __future__ import annotations

from shared.bundle import Manifest
from shared.cells.spec import InputKind


class KindRefused(ValueError):
    """The model does not accept this kind of image; the message names the image, its size and the fix."""


def input_kind(manifest: Manifest, name: str, width: int, height: int) -> InputKind | None:
    """The kind of ``name`` (``width`` x ``height``) by the manifest's ``cells`` section; None for a
    model without one (every image is classified whole, as before).

    Raises:
        KindRefused: the model does not accept that kind.
    """
    spec = manifest.cells
    if spec is None:
        return None
    kind = spec.kind_of(width, height)
    if spec.accepts(kind):
        return kind
    accepted = ", ".join(k.value for k in spec.input_kinds)
    if kind is InputKind.FIELD:
        why = f"its longer side is at least {spec.field_min_side_px} px, so it is a smear field"
        fix = "send single-cell crops, or install a model that accepts fields"
    else:
        why = f"its longer side is under {spec.field_min_side_px} px, so it is a single-cell image"
        fix = "send whole smear fields, or install a model that accepts single cells"
    raise KindRefused(
        f"{name}: the image is {width}x{height}: {why}; model {manifest.name} {manifest.version} accepts "
        f"{accepted} images only: {fix}"
    )
