"""The agent package's layering: the pipeline and model manager know no source, and the agent
imports no other role (hub/, trainer/). Read from the source with ``ast``, imports inside functions
included; circles are checked for every package in tests/test_imports.py.
"""

from __future__ import annotations

from tests.test_imports import import_graph


def agent_graph() -> dict[str, set[str]]:
    """``agents.*`` modules -> the project modules each imports (anywhere in the module)."""
    return {m: deps for m, deps in import_graph().items() if m.split(".")[0] == "agents"}


def test_the_pipeline_and_the_model_manager_know_no_source():
    graph = agent_graph()
    for name in ("agents.pipeline", *(m for m in graph if m.startswith("agents.models"))):
        assert not {m for m in graph[name] if m.startswith("agents.sources")}, name


def test_the_agent_imports_no_other_role():
    for name, targets in agent_graph().items():
        assert not {m for m in targets if m.split(".")[0] in ("hub", "trainer")}, name
