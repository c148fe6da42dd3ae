import pytest

from shared import topics
from shared.topics import Kind, TopicError


def test_build_and_parse_round_trip():
    t = topics.build("lab-1.scope_2", Kind.RESULTS)
    assert t == "leukonet/v1/agents/lab-1.scope_2/results"
    parsed = topics.parse(t)
    assert parsed.agent_id == "lab-1.scope_2"
    assert parsed.kind is Kind.RESULTS


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "-lead", "x" * 65, "sp ace"])
def test_bad_agent_ids_are_refused(bad):
    with pytest.raises(TopicError, match="agent id"):
        topics.build(bad, Kind.STATUS)


@pytest.mark.parametrize(
    "topic",
    ["leukonet/v1/agents/a/unknown", "leukonet/v2/agents/a/results", "leukonet/v1/agents/a/b/results", "x"],
)
def test_foreign_topics_do_not_parse(topic):
    with pytest.raises(TopicError):
        topics.parse(topic)


def test_subscriptions():
    assert topics.subscription(Kind.RESULTS) == "leukonet/v1/agents/+/results"
    assert topics.subscription("status", "hub") == "$share/hub/leukonet/v1/agents/+/status"
