"""Fine-tuning control: stop gradients into the early stages of a backbone.

Freezing BatchNorm statistics is ``frcnn.layers.batchnorm.convert_frozen_batchnorm``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn


def freeze_stages(stages: Sequence[Iterable[nn.Module]], trainable_layers: int) -> None:
    """Set ``requires_grad = False`` on every parameter of all but the last ``trainable_layers`` stages.

    ``stages`` runs from the input (index 0, the stem) to the deepest stage. Only parameters are
    touched: a plain BatchNorm in a frozen stage still updates its running statistics in train
    mode, which is one reason ``frozen_bn=True`` is the default.
    """
    if not 0 <= trainable_layers <= len(stages):
        raise ValueError(f"trainable_layers must be in [0, {len(stages)}], got {trainable_layers}")
    for stage in stages[: len(stages) - trainable_layers]:
        for module in stage:
            module.requires_grad_(False)
