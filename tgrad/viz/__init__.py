"""Colour maps, overlays and figures: the one place that turns maps into pictures.

Maps come in as torch tensors [h,w] (any scale); pictures go out as ``uint8`` numpy
arrays [H,W,3] or matplotlib figures. Nothing here computes an explanation. Figures are
made with matplotlib's object API (``Figure``), not pyplot: no global figure registry to
leak from in a long-running server, no backend to choose.

The package: :mod:`~tgrad.viz.colours` (colour maps, overlays), :mod:`~tgrad.viz.panels`
(Pillow grids) and :mod:`~tgrad.viz.figures` (matplotlib figures); every name is
re-exported here (``from tgrad import viz; viz.overlay(...)``).
"""

from tgrad.viz.colours import (
    CMAPS,
    DEFAULT_CMAP,
    PAPER_CMAP,
    ROBUST_PERCENTILE,
    blend,
    colorize,
    colorize_unit,
    normalize,
    overlay,
    robust_normalize,
    thumbnail,
    to_uint8_image,
)
from tgrad.viz.figures import (
    MEASURE_TITLES,
    colorbar,
    colorbar_pixels,
    curves_figure,
    decomposition_chart,
    layer_strip,
    method_grid,
    method_scores,
    method_times,
    sanity_curves,
    share_label,
    share_text,
    total_size,
)
from tgrad.viz.panels import (
    PENDING_GREY,
    SANITY_ALPHA,
    SANITY_COLUMNS,
    SANITY_TITLE,
    panel_grid,
    sanity_grid,
    with_colorbar,
)

__all__ = [
    "CMAPS",
    "DEFAULT_CMAP",
    "MEASURE_TITLES",
    "PAPER_CMAP",
    "PENDING_GREY",
    "ROBUST_PERCENTILE",
    "SANITY_ALPHA",
    "SANITY_COLUMNS",
    "SANITY_TITLE",
    "blend",
    "colorbar",
    "colorbar_pixels",
    "colorize",
    "colorize_unit",
    "curves_figure",
    "decomposition_chart",
    "layer_strip",
    "method_grid",
    "method_scores",
    "method_times",
    "normalize",
    "overlay",
    "panel_grid",
    "robust_normalize",
    "sanity_curves",
    "sanity_grid",
    "share_label",
    "share_text",
    "thumbnail",
    "to_uint8_image",
    "total_size",
    "with_colorbar",
]
