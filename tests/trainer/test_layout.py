"""The trainer package's shape: imports between its modules go one way, private names stay home.

Read from the source (``ast``), so imports inside functions (the lazy TensorFlow-side ones)
count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import trainer

PACKAGE = Path(trainer.__file__).resolve().parent


def _imports() -> dict[str, list[tuple[str, str, int]]]:
    """``trainer.<module>`` -> ``(imported trainer module, name or "", line)`` for every import in it."""
    found: dict[str, list[tuple[str, str, int]]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        module = f"trainer.{path.stem}"
        edges = found.setdefault(module, [])
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges += [(a.name, "", node.lineno) for a in node.names if a.name.startswith("trainer.")]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}:{node.lineno}: relative import"
                if node.module == "trainer":  # `from trainer import cli`: the submodule itself
                    edges += [(f"trainer.{a.name}", "", node.lineno) for a in node.names]
                elif node.module and node.module.startswith("trainer."):
                    edges += [(node.module, a.name, node.lineno) for a in node.names]
    return found


def test_trainer_modules_import_each_other_without_a_circle() -> None:
    imports = _imports()
    graph = {module: {target for target, _, _ in edges} for module, edges in imports.items()}
    assert {"trainer.train", "trainer.bottleneck", "trainer.train_common"} <= set(graph)
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import circle in trainer/: {' -> '.join(exc.args[1])}") from exc
    # The one-way order the refactor set up: training modes on top of what they share.
    assert (
        order.index("trainer.train_common") < order.index("trainer.bottleneck") < order.index("trainer.train")
    )
    assert "trainer.train" not in graph["trainer.bottleneck"]


def test_no_private_name_is_imported_from_another_module() -> None:
    crossing = [
        f"{module}:{line} imports {name} from {target}"
        for module, edges in _imports().items()
        for target, name, line in edges
        if name.startswith("_")
    ]
    assert crossing == []
