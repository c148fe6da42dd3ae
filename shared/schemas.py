"""Every MQTT payload, defined once (pydantic v2), each with a ``schema_version``.

Payloads are hostile input: :func:`parse_payload` refuses one over its kind's byte limit
(:data:`MAX_PAYLOAD_BYTES`) before parsing, then validates the bytes in one pass with pydantic's
JSON parser, which stops at a nesting depth of 200 with an error instead of recursing. JSON
``NaN`` / ``Infinity`` are refused, and every string and collection has a bound.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from shared.cells.spec import InputKind
from shared.clock import utcnow
from shared.topics import AGENT_ID_PATTERN, Kind

#: Newest payload version. Version 2 added ``precision`` and ``execution_precision`` to results and
#: status; version 3 added cell-level analysis to results (``input_kind``, ``cells``, ``cell_counts``,
#: ``decision_rule``), the out-of-distribution flag (``unfamiliar``, ``ood_score``) and
#: ``specimen_id``. Older payloads (agents not yet upgraded) are still accepted without them.
SCHEMA_VERSION = 3

AgentId = Annotated[str, Field(pattern=f"^{AGENT_ID_PATTERN}$", title="agent id")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", title="sha256 hex digest")]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64)]
#: Most labels a model may have: ``probabilities`` holds one entry per label.
MAX_LABELS = 64
#: Most cells one field's result carries (the finder's ``max_cells`` is capped to it).
MAX_CELLS = 256
#: Largest payload accepted per topic kind, checked before parsing (a result with 64 labels is ~3 KiB;
#: a field's result with 256 cells of 3 labels is ~45 KiB).
MAX_PAYLOAD_BYTES: dict[Kind, int] = {
    Kind.RESULTS: 96 * 1024,
    Kind.STATUS: 8 * 1024,
    Kind.EVENTS: 16 * 1024,
    Kind.DESIRED: 8 * 1024,
}


class PayloadReason(str, Enum):
    """Why a payload was refused: the counter an ingest loop increments."""

    TOO_LARGE = "too_large"
    BAD_JSON = "bad_json"
    SCHEMA = "schema"


class PayloadError(ValueError):
    """A payload that is too large, not JSON, or does not match its schema; ``reason`` says which."""

    def __init__(self, message: str, reason: PayloadReason) -> None:
        super().__init__(message)
        self.reason = reason


def _aware(v: datetime) -> datetime:
    if v.tzinfo is None:
        raise ValueError("timestamps must carry a UTC offset (e.g. 2026-01-01T00:00:00Z)")
    return v


#: A timestamp with its UTC offset: the type of every datetime field of a payload. (A validator on
#: the timestamp fields alone: one on every field cost a Python call per field of every message.)
Timestamp = Annotated[datetime, AfterValidator(_aware)]


def _checks_offset(metadata: Sequence[Any]) -> bool:
    return any(isinstance(m, AfterValidator) and m.func is _aware for m in metadata)


def _naive_datetime_in(annotation: Any) -> bool:
    """Whether ``annotation`` holds a ``datetime`` that is not a :data:`Timestamp`."""
    if get_origin(annotation) is Annotated:
        inner, *metadata = get_args(annotation)
        return not (inner is datetime and _checks_offset(metadata)) and _naive_datetime_in(inner)
    if isinstance(annotation, type) and issubclass(annotation, datetime):
        return True
    return any(_naive_datetime_in(arg) for arg in get_args(annotation))


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    schema_version: Literal[1] = 1  # bump with SCHEMA_VERSION when a payload changes shape

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, info in cls.model_fields.items():
            top = info.annotation is datetime and _checks_offset(info.metadata)
            if not top and _naive_datetime_in(info.annotation):
                raise TypeError(f"{cls.__name__}.{name}: type payload timestamps as Timestamp")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class _PrecisionReport(_Message):
    """Payloads that say which precision produced them (``schema_version`` 2; 1 is still read)."""

    schema_version: Literal[1, 2] = 2  # type: ignore[assignment]
    precision: str | None = Field(
        None,
        max_length=8,
        pattern=r"^[A-Z0-9]+$",
        title="configured precision that ran (FP32, FP16, BF16, INT8)",
    )
    execution_precision: str | None = Field(
        None,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:,]*$",
        title="inference precision read back from the compiled model (f32, bf16, f16; empty: not reported)",
    )

    @model_validator(mode="after")
    def _v1_has_no_precision(self) -> _PrecisionReport:
        if self.schema_version == 1 and (self.precision is not None or self.execution_precision is not None):
            raise ValueError("precision fields need schema_version 2")
        if self.schema_version == 1 and getattr(self, "loops", None):
            raise ValueError("loops need schema_version 2")
        return self


class Timings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    decode_ms: float = Field(ge=0, title="image decode time")
    preprocess_ms: float = Field(ge=0, title="crop + resize time")
    inference_ms: float = Field(ge=0, title="inference time")
    total_ms: float = Field(ge=0, title="file seen to result time")


def _check_probabilities(label: str, probabilities: dict[str, float]) -> None:
    if label not in probabilities:
        raise ValueError(f"label {label!r} is not one of probabilities' keys")
    for k, p in probabilities.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability of {k!r} is {p}, outside [0, 1]")


class CellResult(BaseModel):
    """One white cell the finder found in a field, and what the model said about its crop."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    box: tuple[int, int, int, int] = Field(title="x, y, width, height in pixels of the decoded image")
    label: Label = Field(title="predicted label of the cell")
    confidence: float = Field(ge=0.0, le=1.0, title="probability of that label")
    probabilities: dict[Label, float] = Field(min_length=1, max_length=MAX_LABELS)
    unfamiliar: bool = Field(False, title="the crop is unlike the model's training cells")
    ood_score: float | None = Field(None, ge=0.0, title="out-of-distribution score (higher: stranger)")

    @model_validator(mode="after")
    def _valid(self) -> CellResult:
        x, y, w, h = self.box
        if min(x, y) < 0 or min(w, h) < 1 or max(x + w, y + h) > 1_000_000:
            raise ValueError(f"cell box {self.box} is not x, y >= 0 and width, height >= 1")
        _check_probabilities(self.label, self.probabilities)
        return self


#: Fields a result may carry only from ``schema_version`` 3 on.
V3_RESULT_FIELDS = (
    "input_kind",
    "cells",
    "cell_counts",
    "decision_rule",
    "unfamiliar",
    "ood_score",
    "specimen_id",
)


class ClassificationResult(_PrecisionReport):
    """One classified image, as an agent reports it on ``.../results``.

    A field (``input_kind`` ``field``) carries its ``cells``; its ``label``, ``confidence`` and
    ``probabilities`` are the field's decision (:mod:`shared.cells.decision`), made by the rule in
    ``decision_rule``. ``unfamiliar`` says the input (or enough of its cells) looked unlike anything
    the model was trained on; such a result is never reported as a confident negative.
    """

    schema_version: Literal[1, 2, 3] = SCHEMA_VERSION  # type: ignore[assignment]

    result_id: uuid.UUID = Field(default_factory=uuid.uuid4, title="result id (dedupe key)")
    agent_id: AgentId
    lab: str = Field("", max_length=128, title="lab name")
    image_name: str = Field(min_length=1, max_length=512, title="image file name")
    image_sha256: Sha256
    label: Label = Field(title="predicted label")
    confidence: float = Field(ge=0.0, le=1.0, title="probability of the predicted label")
    probabilities: dict[Label, float] = Field(
        min_length=1, max_length=MAX_LABELS, title="probability per label"
    )
    low_confidence: bool = Field(False, title="confidence below the agent's threshold")
    model_name: str = Field(min_length=1, max_length=128, title="model name")
    model_version: str = Field(min_length=1, max_length=64, title="model version")
    device: str = Field("", max_length=64, title="inference device")
    timings: Timings
    captured_at: Timestamp = Field(default_factory=utcnow, title="when the image was seen")
    input_kind: InputKind | None = Field(None, title="cell or field (schema_version 3)")
    cells: list[CellResult] | None = Field(None, max_length=MAX_CELLS, title="a field's cells")
    cell_counts: dict[Label, Annotated[int, Field(ge=0, le=1_000_000)]] | None = Field(
        None, max_length=MAX_LABELS, title="cells found per predicted label"
    )
    decision_rule: str | None = Field(None, max_length=256, title="the rule that decided the field")
    unfamiliar: bool = Field(False, title="out-of-distribution flag (schema_version 3)")
    ood_score: float | None = Field(None, ge=0.0, title="out-of-distribution score of the input")
    specimen_id: str | None = Field(
        None, min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$", title="specimen / accession id"
    )

    @model_validator(mode="after")
    def _label_in_probabilities(self) -> ClassificationResult:
        _check_probabilities(self.label, self.probabilities)
        if self.schema_version < 3:
            given = [f for f in V3_RESULT_FIELDS if getattr(self, f) not in (None, False)]
            if given:
                raise ValueError(f"{', '.join(given)} need schema_version 3")
        if self.cells is not None and self.input_kind is not InputKind.FIELD:
            raise ValueError("cells are reported for input_kind 'field' only")
        return self


class AgentState(str, Enum):
    ONLINE = "online"
    OFFLINE = "offline"


class Vitals(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    cpu_percent: float | None = None
    memory_percent: float | None = None
    disk_free_mb: float | None = None
    temperature_c: float | None = None
    outbox_depth: int = Field(0, ge=0, le=2**53)
    images_per_s: float = 0.0
    p50_inference_ms: float | None = None
    p95_inference_ms: float | None = None


class LoopState(BaseModel):
    """Liveness of one of the agent's loops (:class:`shared.loops.Loops`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    alive: bool = Field(title="the loop's thread is running")
    restarts: int = Field(0, ge=0, le=2**53, title="times it crashed and was restarted")
    last_activity_age_s: float | None = Field(None, ge=0, title="seconds since it last did work")


class AgentStatus(_PrecisionReport):
    """Retained on ``.../status``; the last will sets ``state=offline``."""

    agent_id: AgentId
    state: AgentState
    lab: str = Field("", max_length=128)
    model_name: str | None = Field(None, max_length=128)
    model_version: str | None = Field(None, max_length=64)
    device: str | None = Field(None, max_length=64)
    vitals: Vitals = Field(default_factory=Vitals)
    loops: dict[Annotated[str, StringConstraints(max_length=64)], LoopState] = Field(
        default_factory=dict, max_length=32, title="each loop's liveness (schema_version 2)"
    )
    sent_at: Timestamp = Field(default_factory=utcnow)


class DesiredModel(_Message):
    """Retained by the hub on ``.../desired``: which model the agent should run.

    ``rollback`` marks an older version desired on purpose (a rollout's rollback, an operator who
    desires a version below the one the agent reports running): an agent refuses a lower version
    of its running model without it (:meth:`downgrades`). :meth:`to_json` writes ``rollback`` only
    when true, so every other desired message is byte-for-byte what agents that predate the field
    accept (they validate with ``extra="forbid"``); ``schema_version`` therefore stays 1, as a bump
    would make those agents refuse every desired message instead of only rollbacks.
    """

    #: :data:`shared.bundle.SEMVER_RE` with its parts captured (major, minor, patch, ``-``/``+``, tail).
    _SEMVER: ClassVar[re.Pattern[str]] = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:([-+])([0-9A-Za-z.-]+))?$")

    agent_id: AgentId
    model_name: str = Field(min_length=1, max_length=128)
    model_version: str = Field(min_length=1, max_length=64)
    bundle_url: str = Field(min_length=1, max_length=2048, title="where to download the bundle")
    bundle_sha256: Sha256
    rollout_id: str | None = Field(None, max_length=64)
    set_at: Timestamp = Field(default_factory=utcnow)
    rollback: bool = Field(
        False, title="an older version desired on purpose: the agent may install it (sent only when true)"
    )

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude=None if self.rollback else {"rollback"}).encode()

    def downgrades(self, running_name: str | None, running_version: str | None) -> bool:
        """True when this desires the running model's name at a version of lower semver precedence.

        Another model name, no running model, or a version that is not semver (see
        :meth:`version_key`) is not ordered: False.
        """
        if running_name != self.model_name or running_version is None:
            return False
        try:
            return self.version_key(self.model_version) < self.version_key(running_version)
        except ValueError:
            return False

    @classmethod
    def version_key(cls, version: str) -> tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]:
        """A sort key giving semantic-version precedence (semver 2.0.0, section 11) to ``version``.

        Accepts what bundle manifests allow (:data:`shared.bundle.SEMVER_RE`): ``X.Y.Z``, then either
        ``-pre.release`` or ``+build``. A pre-release sorts below its release; its dot-separated
        identifiers compare numerically when all digits, else as ASCII text, numbers below text, and
        more identifiers above fewer. Build metadata does not count: ``1.0.0+a`` ranks as ``1.0.0``.

        Raises:
            ValueError: ``version`` is not of that form (the message names it).
        """
        m = cls._SEMVER.fullmatch(version)
        if m is None:
            raise ValueError(
                f"model version {version!r} is not a semantic version (X.Y.Z, X.Y.Z-pre or X.Y.Z+build)"
            )
        major, minor, patch, sep, tail = m.groups()
        if sep != "-":  # a release, with or without build metadata
            return int(major), int(minor), int(patch), 1, ()
        idents = tuple((0, int(i)) if i.isdigit() else (1, i) for i in tail.split("."))
        return int(major), int(minor), int(patch), 0, idents


class ModelEventKind(str, Enum):
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    ACTIVATED = "activated"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class ModelEvent(_Message):
    """Published on ``.../events`` at every step of a model update."""

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    agent_id: AgentId
    event: ModelEventKind
    model_name: str = Field(max_length=128)
    model_version: str = Field(max_length=64)
    rollout_id: str | None = Field(None, max_length=64)
    detail: str = Field("", max_length=4096, title="reason or progress")
    sent_at: Timestamp = Field(default_factory=utcnow)


PAYLOAD_FOR_KIND: dict[Kind, type[_Message]] = {
    Kind.RESULTS: ClassificationResult,
    Kind.STATUS: AgentStatus,
    Kind.EVENTS: ModelEvent,
    Kind.DESIRED: DesiredModel,
}


def parse_payload(kind: Kind, payload: bytes | str) -> _Message:
    """Validate the JSON ``payload`` of a message on a topic of ``kind``, in one pass from bytes.

    Raises:
        PayloadError: over :data:`MAX_PAYLOAD_BYTES`, not JSON (or nested deeper than 200), not an
            object, or not valid for the schema; the message says which field, ``reason`` the kind.
    """
    model = PAYLOAD_FOR_KIND[kind]
    data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    limit = MAX_PAYLOAD_BYTES[kind]
    if len(data) > limit:
        raise PayloadError(
            f"{kind.value} payload is {len(data)} bytes, over the {limit}-byte limit for that kind",
            PayloadReason.TOO_LARGE,
        )
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise PayloadError(
                f"{kind.value} payload is not JSON: {errors[0]['msg']}", PayloadReason.BAD_JSON
            ) from None
        if any(e["type"] == "model_type" and not e["loc"] for e in errors):
            raise PayloadError(
                f"{kind.value} payload must be a JSON object", PayloadReason.BAD_JSON
            ) from None
        shown = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in errors[:10])
        more = f" (+{len(errors) - 10} more)" if len(errors) > 10 else ""
        raise PayloadError(f"{kind.value} payload invalid: {shown}{more}", PayloadReason.SCHEMA) from None
