"""Dashboard pages for models (metrics side by side, compare), rollouts (groups, progress, failures
with reasons, CSRF-protected actions for operators and admins, audited with the person's name) and
agents (model history)."""

from __future__ import annotations

import pytest

from shared.schemas import ModelEventKind
from tests.hub.conftest import auth, csrf, login_as


def test_pages_need_a_session(env):
    for path in ("/models", "/rollouts", "/rollouts/x", "/agents/a00"):
        r = env.client.get(path)
        assert r.status_code == 302 and "/login" in r.headers["Location"], path


def test_models_page_shows_metrics_and_compares(env):
    login_as(env.app, env.client, "admin")
    html = env.client.get("/models").data.decode()
    assert "accuracy" in html and "parity fp32_max_abs" in html and "1e-05" in html
    assert html.count("<td>leuko</td>") == 2
    html = env.client.get("/models?a=leuko/1.0.0&b=leuko/2.0.0").data.decode()
    assert 'id="comparison"' in html and "metrics.accuracy" in html and "+0" in html
    html = env.client.get("/models?a=leuko/1.0.0&b=leuko/7.7.7").data.decode()
    assert "not registered" in html and 'id="comparison"' not in html


def test_rollout_page_groups_failures_and_actions(env):
    env.agents(4)
    r = env.start(stages=[100], error_threshold=0.5)
    env.report(r, ["a00"], ModelEventKind.FAILED, detail="reference output differs <script>x</script>")
    env.report(r, ["a01"], ModelEventKind.ACTIVATED)
    login_as(env.app, env.client, "admin")
    listing = env.client.get("/rollouts").data.decode()
    assert r["rollout_id"] in listing and "running" in listing
    html = env.client.get(f"/rollouts/{r['rollout_id']}").data.decode()
    assert "reference output differs &lt;script&gt;x&lt;/script&gt;" in html and "<script>x" not in html
    assert 'id="groups"' in html and "rollout.js" in html
    token = csrf(html)
    # no token, wrong token: refused; nothing changes
    assert env.client.post(f"/rollouts/{r['rollout_id']}/pause").status_code == 400
    assert (
        env.client.post(f"/rollouts/{r['rollout_id']}/pause", data={"csrf_token": "x" * 43}).status_code
        == 400
    )
    assert env.show(r["rollout_id"])["state"] == "running"
    done = env.client.post(
        f"/rollouts/{r['rollout_id']}/pause", data={"csrf_token": token, "reason": "lunch"}
    )
    assert done.status_code == 302
    assert env.show(r["rollout_id"])["state"] == "paused"
    page = env.client.get(done.headers["Location"]).data.decode()
    assert "pause: done" in page
    again = env.client.post(
        f"/rollouts/{r['rollout_id']}/pause", data={"csrf_token": token}, follow_redirects=True
    )
    assert "pause refused" in again.data.decode()
    entry = env.client.get("/api/v1/audit", headers=auth("admin")).json["items"][0]
    assert (entry["actor"], entry["action"], entry["details"]["reason"]) == (
        "admin",
        "rollout.pause",
        "lunch",
    )
    assert env.client.get("/rollouts/nope").status_code == 404


def test_agent_page_shows_model_history(env):
    env.agents(2)
    r = env.start(stages=[100])
    env.report(r, ["a00"], ModelEventKind.DOWNLOADING)
    env.report(r, ["a00"], ModelEventKind.ACTIVATED, detail="device CPU")
    login_as(env.app, env.client, "admin")
    html = env.client.get("/agents/a00").data.decode()
    for text in ("activated", "downloading", "leuko 2.0.0", "device CPU", r["rollout_id"], "succeeded"):
        assert text in html, text
    assert env.client.get("/agents/ghost").status_code == 404
    fleet = env.client.get("/").data.decode()
    assert 'href="/agents/a00"' in fleet


@pytest.mark.parametrize("role", ["viewer", "reviewer"])
def test_readers_see_rollouts_without_actions_and_cannot_post_them(env, role):
    env.agents(2)
    r = env.start(stages=[100])
    login_as(env.app, env.client, role)
    html = env.client.get(f"/rollouts/{r['rollout_id']}").data.decode()
    assert 'id="groups"' in html and r["rollout_id"] in html  # reading is allowed
    assert 'id="rollout-actions"' not in html and 'id="action-pause"' not in html
    token = csrf(html)  # the sign-out form's: a valid token does not make the action allowed
    refused = env.client.post(f"/rollouts/{r['rollout_id']}/pause", data={"csrf_token": token})
    assert refused.status_code == 403 and b"may not do this" in refused.data
    assert env.show(r["rollout_id"])["state"] == "running"


def test_an_operator_pauses_and_is_the_audit_actor(env):
    env.agents(2)
    r = env.start(stages=[100])
    login_as(env.app, env.client, "operator")
    html = env.client.get(f"/rollouts/{r['rollout_id']}").data.decode()
    assert 'id="action-pause"' in html
    done = env.client.post(f"/rollouts/{r['rollout_id']}/pause", data={"csrf_token": csrf(html)})
    assert done.status_code == 302 and env.show(r["rollout_id"])["state"] == "paused"
    entry = env.client.get("/api/v1/audit", headers=auth("admin")).json["items"][0]
    assert (entry["actor"], entry["action"]) == ("operator", "rollout.pause")
