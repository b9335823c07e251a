"""``tiny``: a ~0.29 M-parameter plain CNN for tests and the fast default run on a CPU.

Seven 3x3 conv + GroupNorm + ReLU layers in four stages, stride 16, 128 channels. Trained from
scratch, so it uses GroupNorm, not BatchNorm: frozen BatchNorm would stay at its identity
initialisation, and batch statistics of one or two images differ from the running averages used at
evaluation. GroupNorm behaves the same in train and eval mode, which an overfit test relies on.
"""

from __future__ import annotations

from torch import nn

from .cuts import Cut

# No pretrained statistics to match: this maps pixels in [0, 1] to roughly [-2, 2], zero-centred.
TINY_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
TINY_STD: tuple[float, float, float] = (0.25, 0.25, 0.25)

# (output stride of the stage, channels of each conv in it); a stage's first conv has stride 2.
_STAGES: list[tuple[int, list[int]]] = [(2, [16]), (4, [32, 32]), (8, [64, 64]), (16, [128, 128])]


def tiny_net() -> nn.Sequential:
    """The whole ``tiny`` network, stages named ``s2``, ``s4``, ``s8``, ``s16`` after their stride."""
    net = nn.Sequential()
    in_channels = 3
    for stride, widths in _STAGES:
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            layers += [
                nn.Conv2d(in_channels, width, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                nn.GroupNorm(8, width),
                nn.ReLU(inplace=True),
            ]
            in_channels = width
        net.add_module(f"s{stride}", nn.Sequential(*layers))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def cut_tiny(model: nn.Sequential) -> Cut:
    """The whole network is the backbone; each named stage is one stage."""
    stages = [{name: stage} for name, stage in model.named_children()]
    strides = [stride for stride, _ in _STAGES]
    return Cut(stages, strides, out_channels=_STAGES[-1][1][-1])
