"""Network families the trainer can build: one record per family, looked up by name.

Each :class:`NetworkSpec` keeps together what belongs together (TF-Slim's habit without its
parallel dicts): the network function, its arg scope, the default input size, the smallest size
it accepts, the scopes of its classification heads (re-initialised when fine-tuning) and the
variables a fine-tune checkpoint restore must skip.

Graphs are TF 1.x graphs (``tf.compat.v1``) built inside the caller's ``tf.Graph().as_default()``
context; nothing here changes global TensorFlow state, and TensorFlow is imported only when a
graph is built, so ``import trainer.nets`` is cheap.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# tf-slim 1.1.0 calls the deprecated Keras ``layer.apply`` for every layer: not ours to fix, and
# pytest turns warnings into errors, so building a network silences exactly that message.
_SLIM_APPLY_WARNING = r"`layer.apply` is deprecated"


@dataclass(frozen=True)
class NetworkSpec:
    """One model family.

    Attributes:
        name: registry key (``--network``).
        default_image_size: the size the family was designed for (299 for Inception V3).
        min_image_size: smallest square input the network accepts.
        aux_logits_min_size: below this size the auxiliary head is not built.
        logits_scopes: variable scopes of the classification heads (trained anew on fine-tuning).
        checkpoint_exclusions: variable scopes a pretrained checkpoint restore must skip.
        network_fn: ``(images, num_classes, is_training, depth_multiplier, create_aux_logits)
            -> (logits [B, num_classes], end_points)``; must be called under ``arg_scope_fn()``.
        arg_scope_fn: ``(weight_decay, batch_norm_decay) -> arg scope``.
    """

    name: str
    default_image_size: int
    min_image_size: int
    aux_logits_min_size: int
    logits_scopes: tuple[str, ...]
    checkpoint_exclusions: tuple[str, ...]
    network_fn: Callable[..., tuple[Any, dict[str, Any]]]
    arg_scope_fn: Callable[..., Any]

    def check_image_size(self, image_size: int) -> None:
        """Raise ValueError when ``image_size`` is too small for this network."""
        if image_size < self.min_image_size:
            raise ValueError(
                f"image size {image_size} is too small for {self.name}: "
                f"use at least {self.min_image_size} px (default {self.default_image_size})"
            )

    def build(
        self,
        images: Any,
        num_classes: int,
        *,
        is_training: bool,
        depth_multiplier: float = 1.0,
        inference: bool = False,
        weight_decay: float = 4e-5,
        batch_norm_decay: float = 0.9997,
        reuse: bool | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """Build the network on ``images`` ([B, S, S, 3] float32 in [-1, 1], RGB) in the current graph.

        The auxiliary head is created only for training graphs whose input is at least
        ``aux_logits_min_size``; inference graphs never have it.

        Returns:
            ``(logits [B, num_classes], end_points)``; ``end_points["AuxLogits"]`` exists only
            when the auxiliary head was built.

        Raises:
            ValueError: the input is smaller than the network accepts, or ``depth_multiplier <= 0``.
        """
        import tf_slim as slim

        size = int(images.shape[1])
        self.check_image_size(size)
        if depth_multiplier <= 0:
            raise ValueError(f"depth_multiplier must be > 0, got {depth_multiplier}")
        aux = (not inference) and is_training and size >= self.aux_logits_min_size
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SLIM_APPLY_WARNING, category=UserWarning)
            scope = self.arg_scope_fn(weight_decay=weight_decay, batch_norm_decay=batch_norm_decay)
            with slim.arg_scope(scope):
                return self.network_fn(
                    images,
                    num_classes=num_classes,
                    is_training=is_training,
                    depth_multiplier=depth_multiplier,
                    create_aux_logits=aux,
                    reuse=reuse,
                )


def _inception_v3_fn(
    images: Any,
    *,
    num_classes: int,
    is_training: bool,
    depth_multiplier: float,
    create_aux_logits: bool,
    reuse: bool | None,
) -> tuple[Any, dict[str, Any]]:
    from tf_slim.nets import inception_v3

    logits, end_points = inception_v3.inception_v3(
        images,
        num_classes=num_classes,
        is_training=is_training,
        depth_multiplier=depth_multiplier,
        create_aux_logits=create_aux_logits,
        reuse=reuse,
        scope="InceptionV3",
    )
    return logits, end_points


def _inception_v3_arg_scope(*, weight_decay: float, batch_norm_decay: float) -> Any:
    from tf_slim.nets import inception_v3

    return inception_v3.inception_v3_arg_scope(weight_decay=weight_decay, batch_norm_decay=batch_norm_decay)


NETWORKS: dict[str, NetworkSpec] = {
    "inception_v3": NetworkSpec(
        name="inception_v3",
        default_image_size=299,
        # The stem and the stride-2 VALID convolutions need 75 px to leave a 1x1 map.
        min_image_size=75,
        aux_logits_min_size=299,
        logits_scopes=("InceptionV3/Logits", "InceptionV3/AuxLogits"),
        checkpoint_exclusions=("InceptionV3/Logits", "InceptionV3/AuxLogits"),
        network_fn=_inception_v3_fn,
        arg_scope_fn=_inception_v3_arg_scope,
    ),
}


def get_network(name: str) -> NetworkSpec:
    """Return the record of the network family ``name``.

    Raises:
        ValueError: ``name`` is not a known family; the message lists the known ones.
    """
    try:
        return NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; known networks: {', '.join(sorted(NETWORKS))}") from None
