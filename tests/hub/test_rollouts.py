"""Rollout engine and API: stages, thresholds (pause / rollback), timeouts with a fake clock, manual
actions, targeting by lab and tag, audit log; reports are fed to the engine as ingest would."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from hub.db.models import Agent, RolloutTarget
from hub.rollouts.policy import stage_sizes
from shared import topics
from shared.schemas import DesiredModel, ModelEventKind, parse_payload
from tests.hub.conftest import auth
from tests.hub.test_desired import read_retained


def test_stage_sizes_cover_every_target_once():
    assert stage_sizes(500, [10, 50, 100]) == [50, 200, 250]
    assert stage_sizes(3, [10, 50, 100]) == [1, 1, 1]
    assert stage_sizes(1, [10, 50, 100]) == [1, 0, 0]
    assert sum(stage_sizes(7, [33, 66, 100])) == 7


def test_staged_rollout_advances_and_completes(env):
    agents = env.agents(10)
    r = env.start(stages=[20, 100], success_threshold=1.0)
    assert (r["state"], r["current_stage"], r["created_by"]) == ("running", 1, "t-admin")
    first = env.targets(r, "desired")
    assert len(first) == 2 and len(env.targets(r, "pending")) == 8
    # the desired state is retained on the broker, with the rollout id and the bundle digest
    msg = read_retained(env.port, topics.build(first[0], topics.Kind.DESIRED))
    desired = parse_payload(topics.Kind.DESIRED, msg.payload)
    assert isinstance(desired, DesiredModel)
    assert (desired.model_version, desired.rollout_id) == ("2.0.0", r["rollout_id"])
    # an upgrade is no rollback, and the field is left out: agents that predate it read the message
    assert desired.rollback is False and b"rollback" not in msg.payload
    assert (
        desired.bundle_sha256
        == env.client.get("/api/v1/models/leuko/2.0.0", headers=auth("admin")).json["sha256"]
    )

    env.report(r, first[:1], ModelEventKind.DOWNLOADING)
    assert env.show(r["rollout_id"])["groups"][0]["in_progress"] == 2
    env.report(r, first[:1], ModelEventKind.ACTIVATED)
    assert env.show(r["rollout_id"])["current_stage"] == 1  # 1 of 2: below the 100% threshold
    env.report(r, first[1:], ModelEventKind.ACTIVATED)
    shown = env.show(r["rollout_id"])
    assert shown["current_stage"] == 2 and len(env.targets(r, "desired", stage=2)) == 8
    env.report(r, [a for a in agents if a not in first], ModelEventKind.ACTIVATED)
    shown = env.show(r["rollout_id"])
    assert shown["state"] == "completed" and shown["totals"]["succeeded"] == 10 and shown["finished_at"]
    with env.services.db.session() as s:
        agent = s.scalar(select(Agent).where(Agent.agent_id == agents[0]))
        assert (agent.model_version, agent.desired_model_version) == ("2.0.0", "2.0.0")
    actions = [a["action"] for a in env.client.get("/api/v1/audit", headers=auth("admin")).json["items"]]
    assert actions[:3] == ["rollout.complete", "rollout.advance", "rollout.start"]
    history = env.client.get(
        f"/api/v1/rollouts/{r['rollout_id']}/history?agent_id={first[0]}", headers=auth("admin")
    ).json["items"]
    assert [h["state"] for h in history] == ["desired", "downloading", "succeeded"]
    agent_hist = env.client.get(f"/api/v1/agents/{first[0]}/history", headers=auth("admin")).json
    assert (
        agent_hist["events"][0]["event"] == "activated" and agent_hist["rollouts"][0]["state"] == "succeeded"
    )


def test_error_threshold_pauses_and_resume_acknowledges_failures(env):
    env.agents(10)
    r = env.start(stages=[50, 100], success_threshold=0.9, error_threshold=0.2, on_failure="pause")
    first = env.targets(r, "desired")
    assert len(first) == 5
    env.report(r, first[:1], ModelEventKind.FAILED, detail="smoke test differs by 0.3")
    assert env.show(r["rollout_id"])["state"] == "running"  # 1 of 5 is not above 20%
    env.report(r, first[1:2], ModelEventKind.FAILED, detail="out of memory")
    shown = env.show(r["rollout_id"])
    assert shown["state"] == "paused" and "2 of 5 agents failed" in shown["reason"]
    assert {f["detail"] for f in shown["failures"]} == {"smoke test differs by 0.3", "out of memory"}
    # late successes do not advance a paused rollout
    env.report(r, first[2:], ModelEventKind.ACTIVATED)
    assert env.show(r["rollout_id"])["current_stage"] == 1
    resumed = env.client.post(
        f"/api/v1/rollouts/{r['rollout_id']}/resume",
        json={"reason": "known bad scopes"},
        headers=auth("admin"),
    )
    assert resumed.status_code == 200, resumed.json
    # 3 of the 5 - 2 acknowledged failures succeeded: the second stage starts
    assert (resumed.json["state"], resumed.json["current_stage"]) == ("running", 2)
    audit = env.client.get("/api/v1/audit", headers=auth("admin")).json["items"]
    resume = next(a for a in audit if a["action"] == "rollout.resume")
    assert resume["actor"] == "t-admin" and resume["details"]["reason"] == "known bad scopes"
    assert any(a["action"] == "rollout.auto_pause" and a["actor"] == "engine" for a in audit)


def test_error_threshold_rolls_back_to_each_previous_model(env):
    env.agents(6, version="1.0.0")
    r = env.start(stages=[50, 100], success_threshold=1.0, error_threshold=0.3, on_failure="rollback")
    first = env.targets(r, "desired")
    assert len(first) == 3
    env.report(r, first[:1], ModelEventKind.ACTIVATED)
    env.status(first[:1], "2.0.0")
    env.report(r, first[1:3], ModelEventKind.FAILED, detail="checksum mismatch")
    shown = env.show(r["rollout_id"])
    assert shown["state"] == "rolled_back" and "above the error threshold" in shown["reason"]
    states = {t["agent_id"]: t["state"] for t in shown["targets"]}
    assert states[first[0]] == "rolling_back"  # it runs 2.0.0: told to go back to 1.0.0
    assert states[first[1]] == states[first[2]] == "rolled_back"  # never left 1.0.0
    assert sorted(s for a, s in states.items() if a not in first) == ["skipped"] * 3
    msg = read_retained(env.port, topics.build(first[0], topics.Kind.DESIRED))
    assert parse_payload(topics.Kind.DESIRED, msg.payload).model_version == "1.0.0"
    # marked as a rollback, so the agent running 2.0.0 installs the lower 1.0.0
    back = parse_payload(topics.Kind.DESIRED, msg.payload)
    assert isinstance(back, DesiredModel) and back.rollback is True
    assert json.loads(msg.payload)["rollback"] is True
    assert back.downgrades("leuko", "2.0.0")
    env.report(r, first[:1], ModelEventKind.ACTIVATED, version="1.0.0")
    assert env.show(r["rollout_id"])["totals"]["rolled_back"] == 3
    # a rolled-back rollout cannot be resumed
    again = env.client.post(f"/api/v1/rollouts/{r['rollout_id']}/resume", headers=auth("admin"))
    assert again.status_code == 409 and again.json["error"]["code"] == "invalid_state"


def test_silent_agents_time_out_and_late_reports_still_count(env):
    env.agents(4)
    r = env.start(stages=[100], success_threshold=0.75, error_threshold=0.5, timeout_s=60)
    ids = env.targets(r, "desired")
    env.report(r, ids[:2], ModelEventKind.ACTIVATED)
    env.clock.advance(30)
    env.engine.tick()
    assert env.show(r["rollout_id"])["totals"]["in_progress"] == 2
    env.clock.advance(31)
    env.engine.tick()
    shown = env.show(r["rollout_id"])
    assert shown["totals"]["by_state"] == {"succeeded": 2, "timed_out": 2}
    assert shown["state"] == "paused" and "below the success threshold" in shown["reason"]
    # an agent that was offline comes back and activates: its target converges
    env.status(ids[2:3], "2.0.0")
    assert env.show(r["rollout_id"])["totals"]["succeeded"] == 3


def test_targets_by_lab_and_tag_and_busy_agents(env):
    a = env.agents(3, lab="North", prefix="n")
    b = env.agents(2, lab="South", prefix="s")
    h = auth("admin")
    assert env.client.put(f"/api/v1/agents/{b[0]}/tags", json={"tags": ["pilot", "pilot"]}, headers=h).json[
        "tags"
    ] == ["pilot"]
    assert env.client.put("/api/v1/labs/North/tags", json={"tags": ["site:n"]}, headers=h).status_code == 200
    labs = {x["lab"]: x for x in env.client.get("/api/v1/labs", headers=h).json["items"]}
    assert labs["North"] == {"lab": "North", "agents": 3, "tags": ["site:n"]}
    assert [x["agent_id"] for x in env.client.get("/api/v1/agents?tag=pilot", headers=h).json["items"]] == [
        b[0]
    ]

    r = env.start(target={"tags": ["pilot", "site:n"]}, stages=[100])
    assert sorted(t["agent_id"] for t in env.show(r["rollout_id"])["targets"]) == sorted([*a, b[0]])
    busy = env.client.post(
        "/api/v1/rollouts",
        json={"model_name": "leuko", "model_version": "2.0.0", "target": {"labs": ["North"]}},
        headers=h,
    )
    assert busy.status_code == 409 and busy.json["error"]["code"] == "agents_busy"
    r2 = env.start(target={"agents": [b[1]]}, stages=[100])  # not in the first rollout: allowed
    assert env.targets(r2, "desired") == [b[1]]
    assert env.client.post(f"/api/v1/rollouts/{r['rollout_id']}/abort", headers=h).json["state"] == "aborted"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model_name": "leuko", "model_version": "9.9.9", "target": {"all": True}}, 404, "model_not_found"),
        (
            {"model_name": "leuko", "model_version": "2.0.0", "target": {"labs": ["Nowhere"]}},
            422,
            "no_targets",
        ),
        ({"model_name": "leuko", "model_version": "2.0.0", "target": {}}, 422, "invalid_body"),
        (
            {"model_name": "leuko", "model_version": "2.0.0", "target": {"all": True, "labs": ["x"]}},
            422,
            "invalid_body",
        ),
        (
            {"model_name": "leuko", "model_version": "2.0.0", "target": {"all": True}, "stages": [50, 20]},
            422,
            "invalid_body",
        ),
        (
            {"model_name": "leuko", "model_version": "2.0.0", "target": {"all": True}, "stages": [10, 50]},
            422,
            "invalid_body",
        ),
        (
            {"model_name": "leuko", "model_version": "2.0.0", "target": {"agents": ["bad id!"]}},
            422,
            "invalid_body",
        ),
    ],
)
def test_start_refusals(env, body, status, code):
    env.agents(2)
    r = env.client.post("/api/v1/rollouts", json=body, headers=auth("admin"))
    assert r.status_code == status, r.json
    assert r.json["error"]["code"] == code


def test_roles_and_manual_actions(env):
    env.agents(4)
    body = {"model_name": "leuko", "model_version": "2.0.0", "target": {"all": True}}
    assert env.client.post("/api/v1/rollouts", json=body, headers=auth("trainer")).status_code == 403
    r = env.start(stages=[25, 100])
    rid = r["rollout_id"]
    assert env.client.get("/api/v1/rollouts", headers=auth("trainer")).json["items"][0]["rollout_id"] == rid
    assert env.client.get("/api/v1/rollouts?state=paused", headers=auth("trainer")).json["items"] == []
    assert env.client.post(f"/api/v1/rollouts/{rid}/pause", headers=auth("trainer")).status_code == 403
    assert env.client.post(f"/api/v1/rollouts/{rid}/explode", headers=auth("admin")).status_code == 404
    assert env.client.post(f"/api/v1/rollouts/{rid}/resume", headers=auth("admin")).status_code == 409
    assert env.client.post(f"/api/v1/rollouts/{rid}/pause", headers=auth("admin")).json["state"] == "paused"
    rb = env.client.post(
        f"/api/v1/rollouts/{rid}/rollback", json={"reason": "wrong model"}, headers=auth("admin")
    )
    assert rb.json["state"] == "rolled_back" and rb.json["reason"].endswith("wrong model")
    assert env.client.get("/api/v1/rollouts/nope", headers=auth("admin")).status_code == 404


def test_delete_refused_while_in_use_and_compare(env, config):
    h = auth("admin")
    ids = env.agents(2, version="1.0.0")
    r = env.client.delete("/api/v1/models/leuko/1.0.0", headers=h)
    assert r.status_code == 409 and r.json["error"]["code"] == "model_in_use"
    assert f"agent {ids[0]} runs it" in r.json["error"]["message"]
    rollout = env.start(stages=[100])
    r = env.client.delete("/api/v1/models/leuko/2.0.0", headers=h)
    assert r.status_code == 409 and "is told to run it" in r.json["error"]["message"]
    env.report(rollout, ids, ModelEventKind.ACTIVATED)
    assert env.show(rollout["rollout_id"])["state"] == "completed"
    assert env.client.delete("/api/v1/models/leuko/2.0.0", headers=auth("trainer")).status_code == 403
    # nobody runs or desires 1.0.0 any more
    sha = env.client.get("/api/v1/models/leuko/1.0.0", headers=h).json["sha256"]
    cmp = env.client.get("/api/v1/models/compare?a=leuko/1.0.0&b=leuko/2.0.0", headers=h).json
    rows = {row["key"]: row for row in cmp["rows"]}
    assert rows["metrics.accuracy"] == {
        "key": "metrics.accuracy",
        "a": 0.9,
        "b": 0.9,
        "delta": 0.0,
        "same": True,
    }
    assert rows["version"]["same"] is False and rows["sha256"]["a"] == sha
    assert env.client.get("/api/v1/models/compare?a=leuko", headers=h).status_code == 400
    assert env.client.delete("/api/v1/models/leuko/1.0.0", headers=h).status_code == 204
    assert env.client.get("/api/v1/models/leuko/1.0.0", headers=h).status_code == 404
    assert not (config.data_dir / "bundles" / sha[:2] / f"{sha}.zip").exists()
    audit = env.client.get("/api/v1/audit?subject=model/", headers=h).json["items"]
    assert audit[0]["action"] == "model.delete" and audit[0]["actor"] == "t-admin"


def test_rollout_targets_unknown_agents_by_id(env):
    r = env.start(target={"agents": ["future-1", "future-2"]}, stages=[100])
    assert sorted(env.targets(r, "desired")) == ["future-1", "future-2"]
    with env.services.db.session() as s:
        rows = s.scalars(select(RolloutTarget).where(RolloutTarget.rollout_id == r["rollout_id"])).all()
        assert {t.previous_model_version for t in rows} == {None}
