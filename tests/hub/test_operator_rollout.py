"""Operator CLI for rollouts, compare, delete and tags against a live in-process hub: output and
exit codes (0 ok, 1 refused, 2 usage, 3 paused, 4 watch timeout)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from hub.operator.agents import agents as agents_cli
from hub.operator.models import models as models_cli
from hub.operator.rollout import rollout as rollout_cli
from shared.schemas import ModelEventKind
from tests.hub.conftest import TOKENS, serve_app


@pytest.fixture
def cli(env) -> Iterator:
    runner = CliRunner()
    with serve_app(env.app) as url:
        base = ["--hub", url, "--token", TOKENS["admin"]]

        def invoke(group, *args):
            return runner.invoke(group, [*args, *base])

        yield invoke


def test_rollout_commands_and_exit_codes(env, cli):
    env.agents(2)
    r = cli(rollout_cli, "start", "leuko", "2.0.0")
    assert r.exit_code == 2 and "exactly one target" in r.output
    r = cli(rollout_cli, "start", "leuko", "2.0.0", "--all", "--stages", "ten")
    assert r.exit_code == 2
    r = cli(
        rollout_cli,
        "start",
        "leuko",
        "2.0.0",
        "--agent",
        "a00",
        "--agent",
        "a01",
        "--stages",
        "50,100",
        "--success-threshold",
        "1",
        "--json",
    )
    assert r.exit_code == 0, r.output
    rid = json.loads(r.output)["rollout_id"]
    r = cli(rollout_cli, "status", rid)
    assert r.exit_code == 0 and "> 1" in r.output and "running" in r.output
    r = cli(rollout_cli, "status", rid, "--watch", "--interval", "0.1", "--timeout", "0.3")
    assert r.exit_code == 4 and "stopped watching" in r.output
    r = cli(rollout_cli, "list")
    assert r.exit_code == 0 and rid in r.output and "1/2" in r.output
    first = env.targets({"rollout_id": rid}, "desired")
    env.report({"rollout_id": rid}, first, ModelEventKind.FAILED, detail="bad IR")
    r = cli(rollout_cli, "status", rid, "--watch", "--interval", "0.1", "--timeout", "10")
    assert r.exit_code == 3 and "bad IR" in r.output  # paused: the failures are listed with reasons
    r = cli(rollout_cli, "resume", rid, "--reason", "flaky scope")
    assert r.exit_code == 0 and "running" in r.output
    r = cli(rollout_cli, "rollback", rid, "--json")
    assert r.exit_code == 0 and json.loads(r.output)["state"] == "rolled_back"
    r = cli(rollout_cli, "status", rid, "--watch", "--interval", "0.1")
    assert r.exit_code == 1
    r = cli(rollout_cli, "pause", rid)
    assert r.exit_code == 1 and "invalid_state" in r.output


def test_compare_delete_and_tags(env, cli):
    r = cli(models_cli, "compare", "leuko", "1.0.0", "2.0.0")
    assert r.exit_code == 0 and "metrics.accuracy" in r.output and "+0" in r.output
    r = cli(models_cli, "compare", "leuko", "1.0.0", "2.0.0", "--json")
    assert json.loads(r.output)["b"]["version"] == "2.0.0"
    env.agents(1)
    r = cli(models_cli, "delete", "leuko", "1.0.0")
    assert r.exit_code == 1 and "a00 runs it" in r.output
    r = cli(models_cli, "delete", "leuko", "2.0.0")
    assert r.exit_code == 0 and "deleted leuko 2.0.0" in r.output
    r = cli(agents_cli, "tag", "a00", "--tag", "pilot", "--tag", "site:n")
    assert r.exit_code == 0 and "pilot, site:n" in r.output
    r = cli(agents_cli, "tag-lab", "Lab A", "--tag", "north")
    assert r.exit_code == 0 and "1 agents" in r.output
    r = cli(agents_cli, "list", "--tag", "north")
    assert r.exit_code == 0 and "a00" in r.output and "pilot,site:n" in r.output
    r = cli(agents_cli, "show", "a00")
    assert r.exit_code == 0 and '["north"]' in r.output
    r = cli(agents_cli, "tag", "ghost", "--tag", "x")
    assert r.exit_code == 1 and "unknown to the hub" in r.output
