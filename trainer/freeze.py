"""Freeze a checkpoint into a self-contained inference graph (``model.pb``).

The frozen graph's contract (what OpenVINO converts and the parity check feeds):

* input  ``input``: float32 ``[1, S, S, 3]``, RGB in [-1, 1] (the network input, i.e. after
  ``shared.preprocessing`` crop + resize and ``to_network_input``);
* output ``probabilities``: float32 ``[1, num_labels]`` softmax, index = label position;
* output ``features``: float32 ``[1, d]``, the network's pre-logits features (Inception V3's
  ``PreLogits``, flattened), which the out-of-distribution statistics (:mod:`shared.ood`) score.

The graph is the inference variant of the network (batch norm with its moving averages, no
dropout, no auxiliary head); the checkpoint's variables become constants via
``tf.compat.v1.graph_util.convert_variables_to_constants``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from shared.logs import kv
from trainer.nets import get_network

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
FEATURES_NAME = "features"
# The end point holding the pre-logits features (the bottleneck trainer caches the same tensor).
FEATURES_END_POINT = "PreLogits"


@dataclass(frozen=True)
class FrozenGraph:
    path: Path
    image_size: int
    num_classes: int
    feature_dim: int = 0
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    features_name: str = FEATURES_NAME


def freeze(
    checkpoint_path: str,
    out_path: str | Path,
    *,
    network: str,
    num_classes: int,
    image_size: int,
    depth_multiplier: float,
) -> FrozenGraph:
    """Build the inference graph, restore ``checkpoint_path`` and write the frozen GraphDef.

    Raises:
        ValueError: unknown network or an image size it cannot take.
        tensorflow.errors.NotFoundError: the checkpoint does not hold the network's variables
            (wrong ``depth_multiplier``/``network`` for this checkpoint).
    """
    import tensorflow as tf

    spec = get_network(network)
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [1, image_size, image_size, 3], name=INPUT_NAME)
        logits, end_points = spec.build(
            images, num_classes, is_training=False, inference=True, depth_multiplier=depth_multiplier
        )
        tf.nn.softmax(logits, name=OUTPUT_NAME)
        features = tf.reshape(end_points[FEATURES_END_POINT], [1, -1], name=FEATURES_NAME)
        feature_dim = int(features.shape[1])
        saver = tf.compat.v1.train.Saver(var_list=tf.compat.v1.global_variables())
    graph.finalize()
    with tf.compat.v1.Session(graph=graph) as sess:
        saver.restore(sess, checkpoint_path)
        frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), [OUTPUT_NAME, FEATURES_NAME]
        )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(frozen.SerializeToString())
    log.info(
        kv("frozen", path=out, nodes=len(frozen.node), bytes=out.stat().st_size, feature_dim=feature_dim)
    )
    return FrozenGraph(path=out, image_size=image_size, num_classes=num_classes, feature_dim=feature_dim)


def node_names(pb_path: str | Path) -> set[str]:
    """Names of the nodes in a frozen GraphDef."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(pb_path).read_bytes())
    return {n.name for n in graph_def.node}


class FrozenModel:
    """Runs a frozen graph: ``predict(x [1, S, S, 3] float32 in [-1, 1] RGB) -> [num_classes]``;
    :meth:`predict_with_features` also returns the ``features`` output (graphs frozen since it exists).

    Use as a context manager (or call :meth:`close`) to release the session.
    """

    def __init__(
        self, pb_path: str | Path, input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME
    ) -> None:
        import tensorflow as tf

        graph_def = tf.compat.v1.GraphDef()
        graph_def.ParseFromString(Path(pb_path).read_bytes())
        self._graph = tf.Graph()
        with self._graph.as_default():
            tf.compat.v1.import_graph_def(graph_def, name="")
        self._input = self._graph.get_tensor_by_name(f"{input_name}:0")
        self._output = self._graph.get_tensor_by_name(f"{output_name}:0")
        names = {op.name for op in self._graph.get_operations()}
        self._features = (
            self._graph.get_tensor_by_name(f"{FEATURES_NAME}:0") if FEATURES_NAME in names else None
        )
        self._sess: Any = tf.compat.v1.Session(graph=self._graph)

    @property
    def input_shape(self) -> list[int]:
        return [int(d) for d in self._input.shape]

    def predict(self, x: np.ndarray) -> np.ndarray:
        if list(x.shape) != self.input_shape:
            raise ValueError(f"frozen graph input wants shape {self.input_shape}, got {list(x.shape)}")
        return np.asarray(self._sess.run(self._output, {self._input: x.astype(np.float32)}))[0]

    def predict_with_features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities [num_classes], features [d])`` of one input.

        Raises:
            ValueError: wrong input shape, or the graph was frozen without a ``features`` output.
        """
        if list(x.shape) != self.input_shape:
            raise ValueError(f"frozen graph input wants shape {self.input_shape}, got {list(x.shape)}")
        if self._features is None:
            raise ValueError(
                f"this frozen graph has no {FEATURES_NAME!r} output; freeze the checkpoint again "
                "(`leukonet trainer export`)"
            )
        probs, feats = self._sess.run([self._output, self._features], {self._input: x.astype(np.float32)})
        return np.asarray(probs)[0], np.asarray(feats)[0]

    def close(self) -> None:
        self._sess.close()

    def __enter__(self) -> FrozenModel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
