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
    ``(R, out_channels, 14, 14) -> (R, c5_out_channels, 7, 7)``. The backbone only *offers* it: it is
    not a submodule of the backbone (not in its parameters, state dict or ``.to()``), and becomes
    part of a detector only when a head takes it (``ResNetC5Head`` registers it as its own). So a
    detector whose head does not use it holds no parameters that never get a gradient (which DDP
    rejects), whatever order its parts are built in.

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
        self._offered_c5 = (c5,) if c5 is not None else ()  # a tuple: not registered as a submodule
        self.c5_out_channels = c5_out_channels

    @property
    def c5(self) -> nn.Module | None:
        """ResNet's conv5 stage, offered to a C4 box head (see the class docstring); None otherwise."""
        return self._offered_c5[0] if self._offered_c5 else None

    def forward(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) normalised -> (N, out_channels, H / stride, W / stride)."""
        return self.body(x)

    def extra_repr(self) -> str:
        return f"name={self.name}, out_channels={self.out_channels}, stride={self.stride}"


def feature_strides(backbone: nn.Module) -> int | dict[str, int]:
    """The stride of a single-map backbone, or ``{name: stride}`` of a multi-level one (an FPN)."""
    strides = getattr(backbone, "strides", None)
    return dict(strides) if strides is not None else int(backbone.stride)


def feature_levels_of(backbone: nn.Module) -> int:
    """How many feature maps ``backbone`` returns: 1, or the levels of a pyramid."""
    strides = feature_strides(backbone)
    return 1 if isinstance(strides, int) else len(strides)
