"""R-CNN box heads: per-RoI features -> a vector, and the class / box predictor.

Shape shorthand: R RoIs, C feature channels, S pooled side, D head output features, K classes.

A head factory is called by ``RoIHeads`` as ``factory(backbone=..., resolution=S)``, so a Hydra
config can choose the head (``_partial_: true``) without repeating the backbone's channel count.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from frcnn.layers.memory_format import is_channels_last
from frcnn.modeling.errors import IncompatibleParts


class FCHead(nn.Module):
    """The paper's VGG head: flatten -> fc -> ReLU -> fc -> ReLU (4096 wide by default)."""

    def __init__(self, backbone: nn.Module, resolution: int, hidden_dim: int = 4096, dropout: float = 0.0) -> None:
        super().__init__()
        in_features = backbone.out_channels * resolution * resolution
        self.fc1 = nn.Linear(in_features, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_features = hidden_dim

    def forward(self, x: Tensor) -> Tensor:
        """(R, C, S, S) -> (R, D)."""
        x = self.dropout(torch.relu(self.fc1(x.flatten(1))))
        return self.dropout(torch.relu(self.fc2(x)))


class ResNetC5Head(nn.Module):
    """The C4 design: ResNet's conv5 stage (``backbone.c5``) on each RoI, then global average pool.

    With 14x14 RoIs, conv5's stride 2 gives 7x7, as in the ResNet paper's Faster R-CNN. The stage
    starts from the backbone's pretrained conv5 weights. A ResNet backbone only *offers* its conv5
    (it is not one of the backbone's submodules, ``frcnn.modeling.backbone.Backbone``): taken here,
    it becomes this head's ``c5``, and a detector whose head does not take it never holds it.
    """

    def __init__(self, backbone: nn.Module, resolution: int) -> None:
        super().__init__()
        c5 = getattr(backbone, "c5", None)
        if c5 is None:
            raise IncompatibleParts(
                f"the resnet_c5 head needs a backbone with a conv5 stage (a ResNet); "
                f"{getattr(backbone, 'name', type(backbone).__name__)} has none"
            )
        self.c5 = c5
        self.out_features = int(backbone.c5_out_channels)

    @property
    def input_memory_format(self) -> torch.memory_format:
        """The layout the pooled RoIs should arrive in: channels-last when conv5's weights are (the
        training and inference rewrites make them so), so that neither of its two first
        convolutions copies the RoIs into that layout, forward or backward."""
        # the first k x k convolution: a 1 x 1 weight is contiguous in both layouts
        weight = next(m.weight for m in self.c5.modules() if isinstance(m, nn.Conv2d) and m.weight[0, 0].numel() > 1)
        return torch.channels_last if is_channels_last(weight) else torch.contiguous_format

    def forward(self, x: Tensor) -> Tensor:
        """(R, C, S, S) -> (R, D)."""
        return self.c5(x).mean(dim=(2, 3))


class BoxPredictor(nn.Module):
    """K+1 class logits (index 0 background) and 4*K class-specific deltas (class k at 4(k-1):4k)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(R, D) -> (class logits (R, K+1), deltas (R, 4*K))."""
        return self.cls_score(x), self.bbox_pred(x)
