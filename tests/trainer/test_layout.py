"""The trainer package's shape: training modes sit on top of what they share, one way.

Circles and private cross-module imports are checked for every package in tests/test_imports.py.
"""

from __future__ import annotations

import graphlib

from tests.test_imports import import_graph


def test_training_modes_sit_on_what_they_share() -> None:
    graph = {
        m: {d for d in deps if d.startswith("trainer.")}
        for m, deps in import_graph().items()
        if m.startswith("trainer.")
    }
    assert {"trainer.train", "trainer.bottleneck", "trainer.train_common"} <= set(graph)
    order = list(graphlib.TopologicalSorter(graph).static_order())
    assert (
        order.index("trainer.train_common") < order.index("trainer.bottleneck") < order.index("trainer.train")
    )
    assert "trainer.train" not in graph["trainer.bottleneck"]
