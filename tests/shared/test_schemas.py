import json
import random
import re
import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.bundle import SEMVER_RE
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
    assert json.loads(r.to_json())["schema_version"] == 3


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


def desired_model(**kw) -> DesiredModel:
    fields = {
        "agent_id": "a1",
        "model_name": "m",
        "model_version": "1.2.3",
        "bundle_url": "http://hub/api/v1/models/m/1.2.3/bundle",
        "bundle_sha256": "a" * 64,
    }
    return DesiredModel(**(fields | kw))


def test_desired_rollback_is_sent_only_when_true():
    # What agents that predate ``rollback`` accept (extra="forbid"): an ordinary message is unchanged.
    before = {"schema_version", "agent_id", "model_name", "model_version", "bundle_url", "bundle_sha256"}
    ordinary = json.loads(desired_model().to_json())
    assert set(ordinary) == before | {"rollout_id", "set_at"} and ordinary["schema_version"] == 1
    back = desired_model(model_version="1.0.0", rollback=True)
    assert json.loads(back.to_json())["rollback"] is True
    assert parse_payload(Kind.DESIRED, back.to_json()) == back
    explicit = parse_payload(Kind.DESIRED, json.dumps({**ordinary, "rollback": False}))
    assert isinstance(explicit, DesiredModel) and explicit.rollback is False
    with pytest.raises(PayloadError, match="rollback"):
        parse_payload(Kind.DESIRED, json.dumps({**ordinary, "rollback": "yes please"}))


def test_versions_order_by_semver_precedence():
    # semver.org section 11's example, then numbers vs text, build metadata, and more than one digit
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.0.1",
        "1.9.0",
        "1.10.0",
        "2.0.0",
        "10.0.0",
    ]
    assert sorted(ordered) != ordered  # text order is not version order
    assert sorted(random.Random(7).sample(ordered, len(ordered)), key=DesiredModel.version_key) == ordered
    key = DesiredModel.version_key
    assert key("1.0.0-2") < key("1.0.0-10") < key("1.0.0-a")
    assert key("1.0.0+build.7") == key("1.0.0+other") == key("1.0.0")
    for bad in ("1.0", "v1.0.0", "1.0.0-rc.1+build", "1.0.0\n", "latest", ""):
        with pytest.raises(ValueError, match="not a semantic version"):
            key(bad)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(version=st.one_of(st.from_regex(SEMVER_RE, fullmatch=True), st.text(max_size=20)))
def test_version_key_accepts_exactly_the_manifest_versions(version):
    accepted = True
    try:
        DesiredModel.version_key(version)
    except ValueError:
        accepted = False
    assert accepted == (re.fullmatch(SEMVER_RE, version) is not None)  # as pydantic checks a manifest


def test_downgrades_compares_the_same_model_only():
    d = desired_model(model_version="1.2.3")
    assert d.downgrades("m", "1.10.0") and d.downgrades("m", "2.0.0") and not d.downgrades("m", "1.2.3")
    assert not d.downgrades("m", "1.2.3-rc.1") and not d.downgrades("m", "1.2.3+build")
    assert not d.downgrades("other", "9.0.0")  # another model: a switch, not a downgrade
    assert not d.downgrades(None, None) and not d.downgrades("m", None)
    assert not d.downgrades("m", "not-a-version")  # unordered (a status is agent input)
