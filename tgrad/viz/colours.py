"""Colour maps and overlays: maps (torch tensors [h,w], any scale) to ``uint8`` RGB
pictures [H,W,3], with matplotlib's colour tables."""

from __future__ import annotations

import functools

import matplotlib
import numpy as np
import torch
from PIL import Image

from tgrad.tgrad import upsample

DEFAULT_CMAP = "viridis"
"""Perceptually uniform (equal steps in value look like equal steps in colour, and it
reads in grey and for the common colour-vision deficiencies), unlike the paper's jet,
whose bright yellow-cyan bands invent edges that are not in the map."""


PAPER_CMAP = "jet"
"""The colour map of the paper's figures."""


CMAPS: dict[str, str] = {
    DEFAULT_CMAP: "viridis (perceptually uniform)",
    PAPER_CMAP: "jet (as in the paper)",
}
"""The colour maps offered to users, with how they are described."""


def normalize(saliency: torch.Tensor) -> torch.Tensor:
    """Min-max normalise a map [h,w] to [0,1]; a constant map becomes all zeros."""
    lo, hi = saliency.min(), saliency.max()
    if hi <= lo:
        return torch.zeros_like(saliency)
    return (saliency - lo) / (hi - lo)


def to_uint8_image(pixels: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image [3,H,W] float in [0,1] (or already [H,W,3] uint8) as uint8 [H,W,3]."""
    if isinstance(pixels, np.ndarray):
        return pixels.astype(np.uint8)
    return (pixels.detach().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def colorize(saliency: torch.Tensor, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """A map [h,w], min-max normalised and coloured: uint8 [h,w,3]."""
    return colorize_unit(normalize(saliency.detach().float()), cmap)


def overlay(
    image: torch.Tensor | np.ndarray,
    saliency: torch.Tensor,
    alpha: float = 0.5,
    cmap: str = DEFAULT_CMAP,
) -> np.ndarray:
    """Blend a coloured map over an image: ``(1 - alpha) * image + alpha * colour``.

    Args:
        image: [3,H,W] float in [0,1], or [H,W,3] uint8.
        saliency: [h,w]; upsampled bilinearly to the image size if needed.
        alpha: opacity of the map, 0 (image only) to 1 (map only).
    Returns:
        uint8 [H,W,3].
    """
    base = to_uint8_image(image)
    size = base.shape[:2]
    heat = colorize(upsample(saliency[None].float(), size)[0], cmap)
    blended = (1 - alpha) * base.astype(np.float32) + alpha * heat.astype(np.float32)
    return blended.round().clip(0, 255).astype(np.uint8)


ROBUST_PERCENTILE = 99.0
"""Where :func:`robust_normalize` clips: the top 1 % of a map all show as the maximum."""


def robust_normalize(saliency: torch.Tensor, percentile: float = ROBUST_PERCENTILE) -> torch.Tensor:
    """Scale a non-negative map [..., h, w] to [0, 1] by its ``percentile``-th value.

    ``min(map / q, 1)`` with ``q`` the map's percentile (per map): a few extreme pixels
    cannot wash the rest of the map out, as they do with min-max scaling. Negative values
    are clipped to 0 (the maps compared here are non-negative by definition); a map whose
    percentile is 0 becomes all zeros.
    """
    values = saliency.detach().float().clamp(min=0)
    flat = values.flatten(-2)
    q = torch.quantile(flat, percentile / 100.0, dim=-1, keepdim=True)
    scaled = torch.where(q > 0, flat / torch.where(q > 0, q, 1.0), 0.0).clamp(max=1.0)
    return scaled.reshape(values.shape)


@functools.lru_cache(maxsize=8)
def _lookup_table(cmap: str) -> tuple[np.ndarray, int]:
    colormap = matplotlib.colormaps[cmap]
    table = (colormap(np.arange(colormap.N))[:, :3] * 255).round().astype(np.uint8)
    return table, colormap.N


def colorize_unit(values: torch.Tensor, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """A map [h,w] already in [0, 1], coloured: uint8 [h,w,3] (no rescaling).

    The colour map's own table is indexed as matplotlib indexes it (``floor(v * N)``,
    1 going to the last entry), so the colours are matplotlib's exactly, in a quarter of
    the time of calling the colour map (it computes RGBA floats for every pixel).
    """
    table, n = _lookup_table(cmap)
    unit = values.detach().float().clamp(0, 1).cpu().numpy()
    index = np.minimum((unit * n).astype(np.intp), n - 1)
    return table[index]


def blend(image: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) * image + alpha * heat`` for two uint8 [H,W,3] pictures."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * heat.astype(np.float32)
    return mixed.round().clip(0, 255).astype(np.uint8)


def thumbnail(pixels: np.ndarray, size: int) -> np.ndarray:
    """A uint8 [H,W,3] picture resized (bilinear) to ``size`` x ``size``."""
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
