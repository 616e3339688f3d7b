"""How alike two saliency maps are (SPEC 5's measures of the sanity check, per sample),
computed on the CPU with scipy and scikit-image, the one place where the engine leaves
torch for numpy.

Measures (:data:`MEASURES`):

* ``spearman_abs``: Spearman rank correlation of the absolute values of the two maps;
* ``spearman``: the same without absolute values;
* ``ssim``: SSIM (scikit-image, 7 px uniform window, ``data_range=1``) of the two maps
  min-max normalised to [0, 1];
* ``hog_spearman``: Spearman correlation of the HOG features (scikit-image, 16 px cells,
  3 x 3 cells per block) of the normalised maps.

A constant map (a fully randomized model can give one, e.g. an all-zero T-Grad map when
no unit is active any more) has no ranking, so Spearman is undefined: it is defined here
as 0 (no agreement) when one of the two maps is constant and 1 when both are (they rank
every pixel alike). A constant map normalises to all zeros, and SSIM, whose constants keep
it finite, is computed on that as it is. Maps smaller than 48 px (tests) get smaller HOG
blocks and cells and a smaller SSIM window, so every measure stays defined.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity
from torch import Tensor

MEASURES: tuple[str, ...] = ("spearman_abs", "spearman", "ssim", "hog_spearman")
"""The similarity measures of every step, in this order."""

HOG_CELL = 16
"""HOG cell size in pixels (SPEC 5)."""


def _constant(a: np.ndarray) -> bool:
    return bool(a.size == 0 or a.min() == a.max())


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two arrays (flattened) with scipy; if one is constant
    it is 0, if both are constant 1 (see the module docstring)."""
    a, b = np.ravel(a), np.ravel(b)
    if _constant(a) or _constant(b):
        return float(_constant(a) and _constant(b))
    return float(spearmanr(a, b).statistic)


def unit_scale(a: np.ndarray) -> np.ndarray:
    """Min-max normalisation to [0, 1] (float64); a constant map becomes all zeros."""
    a = np.asarray(a, dtype=np.float64)
    lo, hi = a.min(), a.max()
    return np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two maps [h,w] min-max normalised to [0, 1] (``data_range=1``), scikit-image's
    7 px uniform window (the largest odd window that fits in smaller maps)."""
    window = min(7, *a.shape)
    window -= 1 - window % 2
    return float(
        structural_similarity(unit_scale(a), unit_scale(b), data_range=1.0, win_size=window)
    )


def hog_features(a: np.ndarray) -> np.ndarray:
    """HOG features (scikit-image) of a map [h,w] min-max normalised to [0, 1]: 16 px cells,
    3 x 3 cells per block; maps under 48 px use as many cells and as large ones as fit."""
    side = min(a.shape)
    cell = min(HOG_CELL, side)
    per_block = min(3, side // cell)
    return hog(
        unit_scale(a),
        pixels_per_cell=(cell, cell),
        cells_per_block=(per_block, per_block),
        feature_vector=True,
    )


def hog_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of the HOG features of two maps [h,w]."""
    return spearman(hog_features(a), hog_features(b))


def similarity(reference: Tensor, maps: Tensor) -> dict[str, Tensor]:
    """Every measure of :data:`MEASURES` between two batches of maps [B,h,w], per sample.

    Runs on the CPU in float64 (scipy and scikit-image are numpy libraries). Returns
    measure -> float64 [B] on the CPU.
    """
    if reference.shape != maps.shape or reference.dim() != 3:
        raise ValueError(
            f"similarity needs two batches of maps [B,h,w] of one shape, got "
            f"{tuple(reference.shape)} and {tuple(maps.shape)}"
        )
    ref = reference.detach().double().cpu().numpy()
    new = maps.detach().double().cpu().numpy()
    values = {m: [] for m in MEASURES}
    for a, b in zip(ref, new, strict=True):
        values["spearman_abs"].append(spearman(np.abs(a), np.abs(b)))
        values["spearman"].append(spearman(a, b))
        values["ssim"].append(ssim(a, b))
        values["hog_spearman"].append(hog_spearman(a, b))
    return {m: torch.tensor(v, dtype=torch.float64) for m, v in values.items()}


__all__ = [
    "HOG_CELL",
    "MEASURES",
    "hog_features",
    "hog_spearman",
    "similarity",
    "spearman",
    "ssim",
    "unit_scale",
]
