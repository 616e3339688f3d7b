"""Drawing that several tabs share: a map over the photo with the page's one colour scale,
the words under the colour bar, a share of the logit as text, how a stopped run marks
what it did not compute, and how the controls (:mod:`tgrad.methods.controls`) are drawn:
grey, after the methods. Pictures themselves are drawn by :mod:`tgrad.viz`."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from explorer.explanation import Explanation, method_label
from tgrad import viz
from tgrad.tgrad import upsample

STOPPED = "stopped"
"""How a view marks what a stopped run did not compute (never an error)."""


def colour_scale(cmap: str = viz.DEFAULT_CMAP) -> str:
    """What the page says under the colour bar: the colour map and the robust scale."""
    return (
        f"Colour map: **{viz.CMAPS.get(cmap, cmap)}**. 0 is no saliency, 1 is the map's "
        f"{viz.ROBUST_PERCENTILE:g}th percentile; the few pixels above it are drawn at 1, so "
        f"that they cannot wash out the rest. Every map on the page (each layer, each "
        f"method) is scaled this way."
    )


COLOUR_SCALE = colour_scale()
"""What the page says under the colour bar with the default colour map."""


def map_overlay(
    pixels: np.ndarray, saliency: torch.Tensor, alpha: float, cmap: str = viz.DEFAULT_CMAP
) -> np.ndarray:
    """A map over the photo with the page's one colour scale (:func:`colour_scale`):
    upsampled bilinearly to the photo, robustly normalised, coloured, blended."""
    size = pixels.shape[:2]
    values = viz.robust_normalize(upsample(saliency[None].float(), size)[0])
    return viz.blend(pixels, viz.colorize_unit(values, cmap), _alpha(alpha))


def _alpha(alpha: float | None) -> float:
    return min(max(float(0.5 if alpha is None else alpha), 0.0), 1.0)


def share_text(explanation: Explanation, value: float) -> str:
    return viz.share_text(value, explanation.total_size)


CONTROL_STYLE = {"color": "#8c8c8c", "linestyle": "--"}
"""How the controls' lines are drawn in the Evaluate and Sanity plots: grey and dashed,
references beside the methods rather than methods."""
CONTROL_CELLS = "color: #8c8c8c; font-style: italic"
"""How the controls' rows are drawn in the Evaluate table (CSS of each cell)."""


def control_labels() -> tuple[str, ...]:
    """The page's names of the controls (:mod:`tgrad.methods.controls`), e.g.
    ``"Random (control)"``."""
    from tgrad.methods import METHODS
    from tgrad.methods.controls import is_control

    return tuple(method_label(name) for name in METHODS if is_control(name))


def is_control_label(text: object) -> bool:
    """Whether a plot line's or a table row's label names a control."""
    return isinstance(text, str) and text.startswith(control_labels())


def grey_controls(figure: Figure, legend: str) -> Figure:
    """Draw the controls' lines of ``figure`` in :data:`CONTROL_STYLE`, and the legend
    it has (at ``legend``, a matplotlib location) again so that it matches."""
    for ax in figure.axes:
        for line in ax.get_lines():
            if is_control_label(line.get_label()):
                line.set(**CONTROL_STYLE)
        if ax.get_legend() is not None:
            ax.legend(fontsize=7, loc=legend)
    return figure


COMPARE_ALPHA = 0.5
COMPARE_COLUMNS = 4
NORMALISATION = (
    f"Every panel uses the same normalisation: the map divided by its own "
    f"{viz.ROBUST_PERCENTILE:g}th percentile and clipped to [0, 1] (so a few extreme pixels "
    f"cannot wash out the rest), the colour map chosen in the Explain tab (its colour bar "
    f'is under the grid) and the same opacity ({COMPARE_ALPHA:g}). "shared" marks the '
    f"methods that came out of one forward and backward pass together: the time shown is "
    f"that pass's."
)
"""What the Compare tab says under its grid (and the API returns with the timings)."""
