"""A FHIR R4B Bundle (type ``collection``) of results: per result one DiagnosticReport and the one
Observation it points to, built and validated by ``fhir.resources`` (its R4B package: the library's
8.x releases ship R5, R4B and STU3 but no longer R4 4.0.1; R4B is R4's backward-compatible
successor for these two resources, so an R4 reader accepts what is used here).

The Observation is the screening suggestion: its code is local to leukonet (:data:`CODES`, code
``leukemia-screening-suggestion``; there is no LOINC or SNOMED CT code for an AI suggestion that we
can vouch for), its value the label after review (:data:`LABELS`; the model's label until a
reviewer reclassifies), components for the model's label, its confidence and the unfamiliar flag,
``method`` and ``device`` naming the model and version, a note with model, precision and device.
Both resources are ``final`` once the result is signed final, else ``preliminary``; a final one
names its signing reviewer(s) as Practitioner performers (by display: the hub keeps no
Practitioner resources). The specimen travels as an identifier in the ``specimen`` reference.
Each resource's id is derived from the result id (UUID 5), so an export repeated gives the same ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from fhir.resources.R4B.annotation import Annotation
from fhir.resources.R4B.bundle import Bundle, BundleEntry, BundleLink
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.observation import Observation, ObservationComponent
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference

from hub.db.models import Classification
from hub.db.review_models import ReviewStatus

#: leukonet's local code systems and identifier namespaces (URNs: nothing to resolve)
CODES = "urn:leukonet:fhir:codes"
LABELS = "urn:leukonet:fhir:labels"
RESULT_IDS = "urn:leukonet:result-id"
SPECIMEN_IDS = "urn:leukonet:specimen-id"
#: HL7 v2 table 0074 (diagnostic service section), code HM: hematology
SECTIONS = "http://terminology.hl7.org/CodeSystem/v2-0074"
UCUM = "http://unitsofmeasure.org"
SUGGESTION = "leukemia screening suggestion"
FINAL = "final"


def _code(code: str, display: str) -> CodeableConcept:
    return CodeableConcept(coding=[Coding(system=CODES, code=code, display=display)], text=display)


def _label(label: str) -> CodeableConcept:
    return CodeableConcept(coding=[Coding(system=LABELS, code=label, display=label)], text=label)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def status_of(review: ReviewStatus | None) -> str:
    """``final`` for a result signed final, else ``preliminary`` (unreviewed, reviewed, awaiting
    its second signature)."""
    return FINAL if review is not None and review.state == FINAL else "preliminary"


def _signers(review: ReviewStatus | None) -> list[Reference]:
    if review is None or review.state != FINAL:
        return []
    names = [n for n in (review.signed_by, review.second_signed_by) if n]
    return [Reference(type="Practitioner", display=name) for name in names]


def _model(result: Classification) -> str:
    return f"{result.model_name} {result.model_version}"


def observation(result: Classification, review: ReviewStatus | None, obs_id: str) -> Observation:
    """The screening suggestion for one result (see the module's docstring)."""
    label = review.current_label if review is not None else result.label
    components = [
        ObservationComponent(
            code=_code("model-label", "label suggested by the model"),
            valueCodeableConcept=_label(result.label),
        ),
        ObservationComponent(
            code=_code("model-confidence", "model confidence"),
            valueQuantity=Quantity(value=round(float(result.confidence), 6), unit="1", system=UCUM, code="1"),
        ),
        ObservationComponent(
            code=_code("unfamiliar", "unlike the training images"), valueBoolean=result.unfamiliar
        ),
        ObservationComponent(
            code=_code("low-confidence", "below the model's confidence threshold"),
            valueBoolean=result.low_confidence,
        ),
    ]
    precision, device = result.precision or "unknown", result.device or "unknown"
    note = f"model {_model(result)}, precision {precision}, device {device}"
    fields: dict[str, Any] = {}
    if result.specimen_id:
        fields["specimen"] = Reference(identifier=Identifier(system=SPECIMEN_IDS, value=result.specimen_id))
    signers = _signers(review)
    if signers:
        fields["performer"] = signers
    return Observation(
        id=obs_id,
        identifier=[Identifier(system=RESULT_IDS, value=str(result.result_id))],
        status=status_of(review),
        code=_code("leukemia-screening-suggestion", SUGGESTION),
        effectiveDateTime=_utc(result.captured_at),
        issued=_utc(result.received_at),
        valueCodeableConcept=_label(label),
        component=components,
        method=CodeableConcept(text=f"image classification by model {_model(result)}"),
        device=Reference(display=f"{_model(result)} on {result.device or 'unknown device'}"),
        note=[Annotation(text=note)],
        **fields,
    )


def diagnostic_report(
    result: Classification, review: ReviewStatus | None, obs_id: str, report_id: str
) -> DiagnosticReport:
    """The report of one result, holding its Observation by reference."""
    label = review.current_label if review is not None else result.label
    state = review.state if review is not None else "unreviewed"
    fields: dict[str, Any] = {}
    if result.specimen_id:
        fields["specimen"] = [Reference(identifier=Identifier(system=SPECIMEN_IDS, value=result.specimen_id))]
    signers = _signers(review)
    if signers:
        fields["performer"] = signers
        fields["resultsInterpreter"] = signers
    return DiagnosticReport(
        id=report_id,
        identifier=[Identifier(system=RESULT_IDS, value=str(result.result_id))],
        status=status_of(review),
        category=[CodeableConcept(coding=[Coding(system=SECTIONS, code="HM", display="Hematology")])],
        code=_code("leukemia-screening-suggestion", SUGGESTION),
        effectiveDateTime=_utc(result.captured_at),
        issued=_utc(result.received_at),
        result=[Reference(reference=f"urn:uuid:{obs_id}")],
        conclusion=(
            f"{label} (model {_model(result)} said {result.label}, confidence {result.confidence:.3f}; "
            f"review: {state})"
        ),
        **fields,
    )


def bundle(
    rows: Iterable[tuple[Classification, ReviewStatus | None]], *, self_url: str, next_url: str | None
) -> Bundle:
    """A ``collection`` Bundle of ``rows`` (DiagnosticReport, then its Observation, per result);
    links ``self`` and, when more results follow, ``next``."""
    entries = []
    for result, review in rows:
        obs_id = str(uuid.uuid5(result.result_id, "Observation"))
        report_id = str(uuid.uuid5(result.result_id, "DiagnosticReport"))
        entries.append(
            BundleEntry(
                fullUrl=f"urn:uuid:{report_id}", resource=diagnostic_report(result, review, obs_id, report_id)
            )
        )
        entries.append(
            BundleEntry(fullUrl=f"urn:uuid:{obs_id}", resource=observation(result, review, obs_id))
        )
    links = [BundleLink(relation="self", url=self_url)]
    if next_url is not None:
        links.append(BundleLink(relation="next", url=next_url))
    fields: dict[str, Any] = {"entry": entries} if entries else {}
    return Bundle(
        id=str(uuid.uuid4()),
        type="collection",
        timestamp=datetime.now(timezone.utc),
        link=links,
        **fields,
    )
