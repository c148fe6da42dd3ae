"""What each process loads: the hub and the operator CLI stay free of OpenCV, TensorFlow and
OpenVINO; the operator CLI also runs without Flask and SQLAlchemy (a lab's IT desk installs only
``leukonet``); and no package has an import circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "hub", "agents", "trainer")
HEAVY = ("cv2", "tensorflow", "openvino")


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_hub_app_imports_no_opencv_tensorflow_or_openvino():
    loaded = run(
        f"import sys, hub.app, hub.server, hub.wsgi; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert loaded.strip() == "[]"


def test_the_operator_cli_runs_without_flask_sqlalchemy_or_the_ml_stacks():
    blocked = ("flask", "werkzeug", "sqlalchemy", "alembic", "numpy", *HEAVY)
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from click.testing import CliRunner
from shared.cli import main
for group in ("models", "agents", "rollout", "training"):
    result = CliRunner().invoke(main, [group, "--help"])
    assert result.exit_code == 0, (group, result.output, result.exception)
    for name in main.get_command(None, group).list_commands(None):
        sub = CliRunner().invoke(main, [group, name, "--help"])
        assert sub.exit_code == 0, (group, name, sub.output, sub.exception)
print("ok")
"""
    assert run(code).strip() == "ok"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Project modules ``module`` imports anywhere (module body or deferred inside a function: a
    circle hidden behind a function-level import is still a circle), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(), str(path))
    skip = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for sub in ast.walk(node)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def import_graph() -> dict[str, set[str]]:
    files = {
        _module_name(p): p
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if "migrations" not in p.parts
    }
    return {m: {d for d in _imports(p, m) if d in files and d != m} for m, p in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_package_has_an_import_circle():
    graph = import_graph()
    assert len(graph) > 50
    assert circles(graph) == []


def test_the_circle_check_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_imported_from_another_module():
    """``_name`` stays in its module: what another module needs is public (merged from trainer/)."""
    crossing = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                    crossing += [
                        f"{path}:{node.lineno} {a.name}" for a in node.names if a.name.startswith("_")
                    ]
    assert crossing == []
