"""The RPN head: a 3x3 conv, then one objectness logit and four deltas per anchor and location.

Shape shorthand: N images, C input channels, Hl, Wl the size of level l's map, A anchors per
location, M_l = Hl * Wl * A anchors of level l.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from frcnn.layers.sparse_heads import conv_relu_heads


class RPNHead(nn.Module):
    """The seed's RPN head: 3x3 conv (512 channels) + ReLU, then 1x1 objectness and 1x1 deltas.

    One objectness logit per anchor with a sigmoid (equivalent to the seed's two-way softmax for
    two classes, with half the parameters). With a feature pyramid the same head runs on every
    level (torchvision's ``RPNHead``: ``conv.0.0`` / ``cls_logits`` / ``bbox_pred`` are ``conv`` /
    ``objectness`` / ``deltas`` here, ``frcnn.interop.torchvision_keys``).

    ``sparse_backward`` (on by default; ``frcnn.layers.training_rewrite`` switches it): the losses
    read a few hundred sampled anchors, so the backward runs only at the locations that have a
    gradient (``frcnn.layers.sparse_heads``); the forward and the gradients are the plain ones.
    """

    sparse_backward: bool = True

    def __init__(self, in_channels: int, num_anchors: int, conv_channels: int = 512) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, conv_channels, kernel_size=3, padding=1)
        self.objectness = nn.Conv2d(conv_channels, num_anchors, kernel_size=1)
        self.deltas = nn.Conv2d(conv_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor, sampled_per_image: int | None = None) -> tuple[Tensor, Tensor]:
        """features (N, C, Hl, Wl) -> (objectness logits (N, A, Hl, Wl), deltas (N, A*4, Hl, Wl)).

        ``sampled_per_image``: anchors per image the losses will read (None: unknown), which bounds
        the locations that get a gradient (``frcnn.layers.sparse_heads``)."""
        Hl, Wl = features.shape[-2:]
        share = 1.0 if sampled_per_image is None else min(1.0, sampled_per_image / max(Hl * Wl, 1))
        logits, deltas = conv_relu_heads(
            features, self.conv, [self.objectness, self.deltas], self.sparse_backward, expected_share=share
        )
        return logits, deltas

    def predict_levels(self, maps: Sequence[Tensor], sampled_per_image: int | None = None) -> tuple[Tensor, Tensor]:
        """L maps (N, C, Hl, Wl), finest first -> (logits (N, M), deltas (N, M, 4)), M = sum of M_l.

        Flattened location-major, then anchor: the order of ``AnchorGenerator``'s anchors.
        """
        logits_per_level, deltas_per_level = [], []
        for feature_map in maps:  # the shared head on every level
            N, _, Hl, Wl = feature_map.shape
            logits, deltas = self(feature_map, sampled_per_image)  # (N, A, Hl, Wl), (N, A*4, Hl, Wl)
            A = logits.shape[1]
            logits_per_level.append(logits.permute(0, 2, 3, 1).reshape(N, -1))  # (N, A, Hl, Wl) -> (N, M_l)
            # (N, A*4, Hl, Wl) -> (N, A, 4, Hl, Wl) -> (N, Hl, Wl, A, 4) -> (N, M_l, 4)
            deltas_per_level.append(deltas.view(N, A, 4, Hl, Wl).permute(0, 3, 4, 1, 2).reshape(N, -1, 4))
        return torch.cat(logits_per_level, dim=1), torch.cat(deltas_per_level, dim=1)
