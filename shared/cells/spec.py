"""What a bundle's manifest says about cell-level analysis and the out-of-distribution flag.

Pydantic only (no numpy, no OpenCV): the hub and the operator CLI read manifests without them.

A model that accepts ``field`` inputs ships its finder's settings (:class:`FinderSpec`) and the
rule that turns per-cell probabilities into a field's result (:class:`DecisionRule`) in the same
signed manifest as its weights, so a model and its finder roll out, and are validated, together.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class InputKind(str, Enum):
    """What one image is: a single white cell (ALL-IDB2-like crop) or a whole field of a smear."""

    CELL = "cell"
    FIELD = "field"


class FinderSpec(BaseModel):
    """Settings of the classical white-cell finder (:func:`shared.cells.finder.find_cells`).

    Sizes are in pixels of the image as decoded, at the microscope's native scale: the crops the
    classifier was trained on must show cells at the size the finder cuts them. Absorbances are
    shares of light a nucleus absorbs (0..1) in the finder's nuclear-stain channel. The defaults
    were tuned on generated fields (``leukonet trainer fields``; docs/cells.md).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["opencv_nucleus_v1"] = Field("opencv_nucleus_v1", title="finder algorithm")
    work_max_side_px: int = Field(
        1296, ge=256, le=8192, title="the finder works on the field scaled down to this longer side"
    )
    nucleus_threshold: float | None = Field(
        None, ge=0.0, le=1.0, title="nucleus threshold as absorbance, share of light absorbed (None: Otsu)"
    )
    min_nucleus_area_px: int = Field(600, ge=1, title="smallest nucleus kept, at native scale")
    max_nucleus_area_px: int = Field(40_000, ge=1, title="largest nucleus kept, at native scale")
    min_nucleus_absorbance: float = Field(
        0.2, ge=0.0, le=1.0, title="floor of the Otsu threshold (absorbance of a nucleus at least)"
    )
    min_solidity: float = Field(0.6, ge=0.0, le=1.0, title="area / convex hull area of a kept nucleus")
    split_touching: bool = Field(True, title="split touching nuclei at the peaks of their distance transform")
    split_ratio: float = Field(
        0.85, gt=0.0, le=1.0, title="two peaks are two nuclei when the ridge between them dips below this"
    )
    cell_scale: float = Field(1.15, ge=1.0, le=4.0, title="cell box side / nucleus box side")
    crop_side_px: int = Field(257, ge=32, le=2048, title="side of the square cut around each cell")
    max_cells: int = Field(256, ge=1, le=1024, title="most cells classified per field (largest first)")

    @model_validator(mode="after")
    def _sizes(self) -> FinderSpec:
        if self.min_nucleus_area_px >= self.max_nucleus_area_px:
            raise ValueError("min_nucleus_area_px must be below max_nucleus_area_px")
        return self


class DecisionRule(BaseModel):
    """How a field's label follows from its cells (:func:`shared.cells.decision.decide`).

    A cell *counts* when its probability of one of ``positive_labels`` is at least ``threshold``.
    ``any``: one counting cell makes the field positive; ``count``: at least ``min_count``;
    ``fraction``: at least ``min_fraction`` of the cells found.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["any", "count", "fraction"] = "any"
    positive_labels: list[str] = Field(min_length=1, max_length=64, title="labels that make a field positive")
    negative_label: str = Field(
        min_length=1, max_length=64, title="the field's label when the rule does not fire"
    )
    threshold: float = Field(0.5, gt=0.0, le=1.0, title="per-cell probability at which a cell counts")
    min_count: int = Field(1, ge=1, le=10_000)
    min_fraction: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _negative_not_positive(self) -> DecisionRule:
        if self.negative_label in self.positive_labels:
            raise ValueError(f"negative_label {self.negative_label!r} is also a positive label")
        return self

    def describe(self) -> str:
        """The rule in words, as results and the hub show it."""
        labels = "/".join(self.positive_labels)
        if self.kind == "count":
            return f"{self.min_count}+ cells with p({labels}) >= {self.threshold:g}"
        if self.kind == "fraction":
            return f">= {self.min_fraction:.0%} of cells with p({labels}) >= {self.threshold:g}"
        return f"any cell with p({labels}) >= {self.threshold:g}"


class CellAnalysisSpec(BaseModel):
    """The manifest's ``cells`` section: which inputs the model takes, how fields are analysed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_kinds: list[InputKind] = Field(
        default_factory=lambda: [InputKind.CELL, InputKind.FIELD],
        min_length=1,
        title="inputs the model accepts",
    )
    field_min_side_px: int = Field(
        640, ge=64, le=100_000, title="an image whose longer side is at least this is a field"
    )
    finder: FinderSpec = Field(default_factory=FinderSpec)
    decision: DecisionRule
    metrics: dict[str, object] = Field(default_factory=dict, title="finder and field-level evaluation")

    def kind_of(self, width: int, height: int) -> InputKind:
        """The kind of a ``width`` x ``height`` image, by :attr:`field_min_side_px`."""
        return InputKind.FIELD if max(width, height) >= self.field_min_side_px else InputKind.CELL

    def accepts(self, kind: InputKind) -> bool:
        return kind in self.input_kinds


class OodSpec(BaseModel):
    """The manifest's ``ood`` section: how unlike the training images an input may look.

    The trainer fits :attr:`method` on the pre-logits features of the training images (file
    :attr:`stats_file` in the bundle, read by :mod:`shared.ood`) and sets :attr:`threshold` so that
    :attr:`target_flag_rate` of held-out images score above it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["mahalanobis_pca"] = "mahalanobis_pca"
    stats_file: str = Field(min_length=1, max_length=256, title="bundle file with the feature statistics")
    feature_output: str = Field(min_length=1, max_length=256, title="IR output with the pre-logits features")
    feature_dim: int = Field(ge=1, le=65_536)
    threshold: float = Field(ge=0.0, title="score above which an input is unfamiliar")
    target_flag_rate: float = Field(0.01, gt=0.0, lt=1.0, title="held-out share the threshold flags")
    calibration_images: int = Field(0, ge=0, title="held-out images the threshold was set on")
    held_out_flag_rate: float | None = Field(None, ge=0.0, le=1.0, title="measured on those images")
    field_unfamiliar_fraction: float = Field(
        0.25, gt=0.0, le=1.0, title="a field is unfamiliar when at least this share of its cells is"
    )
