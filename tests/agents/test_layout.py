"""The agent package's import graph: no cycles, and no import of another role (hub/, trainer/).

Read from the source with ``ast`` (every import statement, also those inside functions), so a cycle
is caught even where Python's import order happens to hide it today.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, name: str) -> set[str]:
    """Every module ``path`` (module ``name``) imports, as dotted names, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def agent_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in (ROOT / "agents").rglob("*.py")}
    return {name: imported(path, name) for name, path in files.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules (first == last), or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_the_agent_package_has_no_import_cycle():
    graph = agent_graph()
    assert {"agents.models.manager", "agents.sources.base", "agents.daemon"} <= set(graph)
    internal = {name: {m for m in targets if m in graph} for name, targets in graph.items()}
    assert find_cycle(internal) == []


def test_the_pipeline_and_the_model_manager_know_no_source():
    graph = agent_graph()
    for name in ("agents.pipeline", *(m for m in graph if m.startswith("agents.models"))):
        assert not {m for m in graph[name] if m.startswith("agents.sources")}, name


def test_the_agent_imports_no_other_role():
    for name, targets in agent_graph().items():
        assert not {m for m in targets if m.split(".")[0] in ("hub", "trainer")}, name


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
