"""The controls: two reference "methods" that know nothing about the model.

They stand beside the paper's methods in every table and check as the answer to "is this
better than chance?":

* ``random``: a seeded uniform map, values in [0, 1) drawn independently per pixel at the
  input's resolution. It ranks pixels by chance, so it is the floor every faithfulness
  metric should beat.
* ``edge``: a Sobel edge map of the image (Adebayo et al. 2018's control). It depends on
  the photo alone, so it stays the same however the model is randomized: a method that
  passes the sanity check no better than an edge detector explains nothing about the
  model.

Neither registers a hook, reads a gradient, or runs a pass of its own: each is a function
of the input's shape or values in the record (the registry says ``Pass.FORWARD``, so a
call of :func:`tgrad.methods.explain` asking only for controls runs the model forward
once, for the target, and never backward).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from tgrad.capture import Record
from tgrad.methods.gradient import WatchesNothing

CONTROL = "control"
"""The registry family of the controls (``METHODS[name].family``)."""

SOBEL_SMOOTH = (0.25, 0.5, 0.25)
"""Sobel's smoothing weights across the derivative, normalised to sum 1 (scikit-image's)."""
SOBEL_EDGE = (1.0, 0.0, -1.0)
"""Sobel's central difference along the derivative."""


def is_control(name: str) -> bool:
    """Whether the registry's method ``name`` is a control."""
    from tgrad.methods import METHODS  # the registry imports this module

    return METHODS[name].family == CONTROL


def controls_last(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` with the controls moved to the end, each part in its own order."""
    names = tuple(names)
    return tuple(n for n in names if not is_control(n)) + tuple(n for n in names if is_control(n))


def uniform_map(size: tuple[int, int], seed: int) -> Tensor:
    """A map [h,w] of values uniform in [0, 1), from torch's CPU generator seeded with
    ``seed`` (the same numbers on every device)."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.rand(size, generator=generator)


def sobel_magnitude(images: Tensor) -> Tensor:
    """Sobel edge magnitude of every channel of ``images`` [B,C,H,W], summed over channels
    [B,H,W].

    Per channel ``sqrt((g_x^2 + g_y^2) / 2)``, with ``g_x`` the central difference
    ``(1, 0, -1)`` along the width smoothed by ``(1, 2, 1) / 4`` along the height (``g_y``
    the transpose) and the border pixel repeated as padding: the definition of
    ``skimage.filters.sobel`` with its default ``mode="reflect"``. A unit step gives
    ``sqrt(1/2)`` on the two pixels beside it. In the units of ``images``.
    """
    batch, channels, height, width = images.shape
    smooth = images.new_tensor(SOBEL_SMOOTH)
    edge = images.new_tensor(SOBEL_EDGE)
    kernels = torch.stack([torch.outer(smooth, edge), torch.outer(edge, smooth)])[:, None]
    planes = images.reshape(batch * channels, 1, height, width)
    padded = F.pad(planes, (1, 1, 1, 1), mode="replicate")
    gradients = F.conv2d(padded, kernels)  # [B*C, 2, H, W]: g_x, g_y
    magnitude = gradients.square().mean(1).sqrt()
    return magnitude.view(batch, channels, height, width).sum(1)


class RandomMap(WatchesNothing):
    """The ``random`` control: :func:`uniform_map` at the input's size for the option
    ``seed`` (0). Every image of a batch gets the same map, so a batch gives the maps of
    its images one by one; the map depends on nothing but the seed and the size."""

    def attribute(self, record: Record) -> Tensor:
        x = record.input
        noise = uniform_map(tuple(x.shape[-2:]), self.options["seed"])
        return noise.to(x.device, x.dtype).expand(x.shape[0], -1, -1).clone()


class EdgeMap(WatchesNothing):
    """The ``edge`` control: :func:`sobel_magnitude` of the input as the model receives it
    (normalised: for the zoo's models each channel is its pixels' edge map divided by the
    channel's standard deviation)."""

    def attribute(self, record: Record) -> Tensor:
        return sobel_magnitude(record.input)


__all__ = [
    "CONTROL",
    "EdgeMap",
    "RandomMap",
    "controls_last",
    "is_control",
    "sobel_magnitude",
    "uniform_map",
]
