import json
import uuid
from datetime import datetime, timezone

import pytest

from shared.schemas import (
    AgentState,
    AgentStatus,
    ClassificationResult,
    DesiredModel,
    PayloadError,
    Timings,
    parse_payload,
)
from shared.topics import Kind


def make_result(**kw) -> ClassificationResult:
    base = {
        "agent_id": "a1",
        "image_name": "x.jpg",
        "image_sha256": "0" * 64,
        "label": "ALL",
        "confidence": 0.9,
        "probabilities": {"ALL": 0.9, "normal": 0.1},
        "model_name": "m",
        "model_version": "1.0.0",
        "timings": Timings(decode_ms=1, preprocess_ms=1, inference_ms=2, total_ms=4),
    }
    base.update(kw)
    return ClassificationResult(**base)


def test_result_round_trips_through_json():
    r = make_result()
    back = parse_payload(Kind.RESULTS, r.to_json())
    assert back == r
    assert isinstance(back.result_id, uuid.UUID)
    assert json.loads(r.to_json())["schema_version"] == 2


def test_results_and_status_carry_the_precision_that_ran():
    r = make_result(precision="FP32", execution_precision="f32")
    back = parse_payload(Kind.RESULTS, r.to_json())
    assert (back.precision, back.execution_precision) == ("FP32", "f32")
    s = AgentStatus(agent_id="a1", state=AgentState.ONLINE, precision="BF16", execution_precision="bf16")
    assert parse_payload(Kind.STATUS, s.to_json()) == s


def test_schema_version_1_payloads_are_still_accepted():
    v1 = json.loads(make_result().to_json())
    v1["schema_version"] = 1
    del v1["precision"], v1["execution_precision"]
    back = parse_payload(Kind.RESULTS, json.dumps(v1).encode())
    assert back.schema_version == 1 and back.precision is None
    status_v1 = {"schema_version": 1, "agent_id": "a1", "state": "online"}
    assert parse_payload(Kind.STATUS, json.dumps(status_v1).encode()).schema_version == 1
    v1["precision"] = "FP32"
    with pytest.raises(PayloadError, match="need schema_version 2"):
        parse_payload(Kind.RESULTS, json.dumps(v1).encode())


def test_label_must_be_a_probability_key():
    with pytest.raises(ValueError, match="not one of probabilities"):
        make_result(label="AML")


def test_naive_timestamps_are_refused():
    with pytest.raises(ValueError, match="UTC offset"):
        make_result(captured_at=datetime(2026, 1, 1))
    assert make_result(captured_at=datetime(2026, 1, 1, tzinfo=timezone.utc))


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b"\xff\xfe", "not JSON"),
        (json.dumps({"agent_id": "a1"}).encode(), "image_name"),
        (json.dumps({"schema_version": 99}).encode(), "schema_version"),
    ],
)
def test_bad_payloads_name_the_problem(payload, match):
    with pytest.raises(PayloadError, match=match):
        parse_payload(Kind.RESULTS, payload)


def test_extra_fields_are_refused():
    data = json.loads(make_result().to_json())
    data["surprise"] = 1
    with pytest.raises(PayloadError, match="surprise"):
        parse_payload(Kind.RESULTS, json.dumps(data))


def test_status_and_desired():
    s = AgentStatus(agent_id="a1", state=AgentState.OFFLINE)
    assert parse_payload(Kind.STATUS, s.to_json()) == s
    d = DesiredModel(
        agent_id="a1",
        model_name="m",
        model_version="1.2.3",
        bundle_url="http://hub/api/v1/models/m/1.2.3/bundle",
        bundle_sha256="a" * 64,
    )
    assert parse_payload(Kind.DESIRED, d.to_json()) == d
    with pytest.raises(PayloadError, match="bundle_sha256"):
        parse_payload(Kind.DESIRED, json.dumps({**json.loads(d.to_json()), "bundle_sha256": "nothex"}))
