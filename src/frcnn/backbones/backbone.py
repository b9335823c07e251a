"""The feature extractor every detector in this project runs first.

Shape shorthand: N images, C = ``out_channels``, s = ``stride``;
Hf = H / s and Wf = W / s are the feature map's height and width.
"""

from __future__ import annotations

from torch import Tensor, nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """A single feature map at one stride, plus what the rest of the detector must know about it.

    ``forward(x)``: ``x`` float32 ``(N, 3, H, W)``, already normalised with ``image_mean`` /
    ``image_std`` -> float32 ``(N, out_channels, H / stride, W / stride)``.
    The size is exact when H and W are multiples of ``stride`` (the InputTransform pads the batch to
    one, so a detector only ever sees this case). For other sizes it is ``ceil(H / stride)`` for the
    ResNets, MobileNets and ``tiny`` (every downsampling is a padded stride-2 conv or pool),
    ``floor(H / stride)`` for ``vgg16`` (unpadded 2x2 max-pools), and a mix for ``densenet121``.

    ``c5`` (ResNets only) is ResNet's conv5 stage (``layer4``, first block still at stride 2), kept
    out of ``forward`` for the C4 design: the R-CNN head runs it on each pooled RoI,
    ``(R, out_channels, 14, 14) -> (R, c5_out_channels, 7, 7)``. It is a registered submodule so
    that ``.to()``, frozen BatchNorm, freezing and checkpoints cover it; a detector whose head does
    not use it should set ``backbone.c5 = None``, or its parameters never receive a gradient (DDP
    then needs ``find_unused_parameters``).

    ``image_mean`` / ``image_std`` are the RGB statistics, for pixels in [0, 1], that the weights
    were trained with; the InputTransform normalises with them.
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        name: str,
        out_channels: int,
        stride: int,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        c5: nn.Module | None = None,
        c5_out_channels: int | None = None,
    ) -> None:
        super().__init__()
        if (c5 is None) != (c5_out_channels is None):
            raise ValueError("c5 and c5_out_channels come together")
        self.body = body
        self.name = name
        self.out_channels = out_channels
        self.stride = stride
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.c5 = c5
        self.c5_out_channels = c5_out_channels

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) normalised -> (N, out_channels, H / stride, W / stride)."""
        return self.body(x)

    def extra_repr(self) -> str:
        return f"name={self.name}, out_channels={self.out_channels}, stride={self.stride}"
