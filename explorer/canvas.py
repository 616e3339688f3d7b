"""The layer view drawn in the browser: what the page receives once per explanation.

At explain time the page gets every slider position's map once, as ``uint8`` codes on
the map's own grid (:class:`Codes`), the running sums of "everything up to here" as
per-grid partial sums on their own grids, the photo, the robust scale of every view
and the colour maps' 256-entry tables (:func:`payload`). The browser code
(``canvas.js``, :data:`LOAD_JS` and :data:`STEP_JS`) then upsamples, scales, colours
and blends with the server's conventions, so moving the layer slider, switching the
mode, the opacity or the colour map redraws the pictures with no request to the server.

The conventions, those of :func:`explorer.draw.map_overlay` (the server's picture):

* a map on grid [h,w] is upsampled bilinearly (``align_corners=False``, as
  :func:`tgrad.tgrad.upsample`) to the backdrop's size [H,W];
* divided by its robust scale ``q``, the 99th percentile of the upsampled map
  (:func:`robust_scale`, as :func:`tgrad.viz.robust_normalize`), and clipped to [0, 1];
* coloured by the colour map's table entry ``min(floor(v * 256), 255)``
  (:func:`tgrad.viz.colorize_unit`);
* blended ``(1 - alpha) * photo + alpha * colour`` and rounded (:func:`tgrad.viz.blend`).

"Everything up to position k" is formula 8 (:func:`tgrad.tgrad.aggregate`): for each
grid g, ``P_g(k) = sum_{t <= k on g} w_t S_t`` with ``w_t = score_t / sum(U(S_t))``;
the map is ``sum_g U_in(P_g(k))`` on the model's input grid, then upsampled to the
backdrop like any map. The payload holds, for each position k, the partial sum of its
own grid at k; the browser sums, for each grid, the latest partial at or before k.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from explorer.chart import chart_caption
from explorer.explanation import Explanation
from explorer.tabs.explain_draw import layer_caption
from explorer.view import ALONE, CUMULATIVE, MODES
from tgrad import viz
from tgrad.tgrad import coverage, upsample

HEADROOM = 4.0
"""How far above its robust scale a term's map keeps its values in the codes (in units
of the scale). Values above 1 are drawn as 1, but bilinear upsampling mixes a cell with
its neighbours before that clip, so a cell at 3 next to one at 0 still lifts the pixels
between them above 1 on the server; keeping values up to 4 makes such pixels match, at a
quantisation step of 4/255 of the scale."""
CODES = 255
"""The largest code: a map's value ``v`` in [0, top] is sent as ``round(v / top * 255)``."""
VERSION = 1
"""The payload's format; the browser code draws only the version it knows."""


@dataclass(frozen=True)
class Codes:
    """A map on its own grid as ``uint8`` codes: value = ``codes / 255 * top``."""

    codes: np.ndarray
    """uint8 [h,w]"""
    top: float
    """The value of code 255, in the map's units (0: an all-zero map)."""

    def values(self) -> np.ndarray:
        """The dequantised map, float64 [h,w]; each value within ``top / 510`` of the
        map it was made from (after the map was clipped to [0, top])."""
        return self.codes.astype(np.float64) * (self.top / CODES)

    def json(self) -> dict[str, Any]:
        """``{"grid": [h, w], "top": top, "codes": base64 of the row-major bytes}``."""
        h, w = self.codes.shape
        data = base64.b64encode(np.ascontiguousarray(self.codes).tobytes()).decode("ascii")
        return {"grid": [h, w], "top": self.top, "codes": data}


def quantise(values: torch.Tensor, top: float) -> Codes:
    """``values`` [h,w] (non-negative) clipped to [0, top] as codes (round to nearest)."""
    if not top > 0:
        return Codes(np.zeros(tuple(values.shape), np.uint8), 0.0)
    unit = values.detach().double().clamp(0, top) / top
    return Codes((unit * CODES).round().to(torch.uint8).numpy(), float(top))


def robust_scale(saliency: torch.Tensor, size: tuple[int, int]) -> float:
    """The robust scale of a map [h,w] drawn at ``size``: the
    :data:`tgrad.viz.ROBUST_PERCENTILE`-th percentile of the map upsampled to ``size``
    (negative values as 0), the ``q`` that :func:`tgrad.viz.robust_normalize` divides by."""
    flat = upsample(saliency.detach().float()[None], size)[0].clamp(min=0).flatten()
    # torch.quantile's linear interpolation between the two order statistics around
    # (n - 1) * p, found by selection instead of a full sort
    where = (flat.numel() - 1) * viz.ROBUST_PERCENTILE / 100.0
    below = int(where)
    lo = torch.kthvalue(flat, below + 1).values
    above = flat[flat > lo]
    if int((flat <= lo).sum()) >= below + 2 or above.numel() == 0:
        return float(lo)  # the next order statistic is lo again (or there is none)
    return float(lo + (above.min() - lo) * (where - below))


def term_codes(saliency: torch.Tensor, scale: float) -> Codes:
    """A term's own map [h,w] for the browser: in units of its robust scale ``scale``,
    kept up to :data:`HEADROOM` (all zeros when the scale is 0, as the server draws it)."""
    if not scale > 0:
        return quantise(saliency, 0.0)
    relative = saliency.detach().double().clamp(min=0) / scale
    return quantise(relative, min(float(relative.max()), HEADROOM))


def grid_partials(explanation: Explanation) -> list[torch.Tensor]:
    """For each slider position k, ``P_g(k)`` [h,w] on the grid g of k's term: the sum
    of ``w_t S_t`` over the terms t <= k on that grid, ``w_t = score_t / sum(U(S_t))``
    with U the upsampling to the model's input (formula 8, as
    :func:`tgrad.tgrad.aggregate` groups it)."""
    size = tuple(explanation.result.saliency.shape[-2:])
    running: dict[tuple[int, int], torch.Tensor] = {}
    partials = []
    for term in explanation.spatial_terms:
        assert term.map is not None  # spatial terms have maps
        grid = tuple(term.grid)
        cells = term.map[0].double()
        mass = float((cells * coverage(grid, size, cells)).sum())
        weight = float(term.score[0]) / mass if mass > 0 else 0.0
        running[grid] = running.get(grid, torch.zeros_like(cells)) + weight * cells
        partials.append(running[grid].clone())
    return partials


def colour_tables() -> dict[str, str]:
    """Each offered colour map's table as base64 of 256 x 3 ``uint8`` (RGB), the entries
    :func:`tgrad.viz.colorize_unit` indexes (``floor(v * 256)``, clipped to 255)."""
    ramp = (torch.arange(256, dtype=torch.float64) + 0.5) / 256  # entry i at floor(v*256)=i
    tables = {}
    for name in viz.CMAPS:
        table = viz.colorize_unit(ramp[None], name)[0]
        tables[name] = base64.b64encode(np.ascontiguousarray(table).tobytes()).decode("ascii")
    return tables


def png_data_url(pixels: np.ndarray) -> str:
    """A uint8 [H,W,3] picture as a lossless ``data:image/png;base64,...`` URL."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def payload(explanation: Explanation) -> dict[str, Any]:
    """Everything the browser needs to draw every view of ``explanation``, as JSON.

    Keys: ``version``; ``size`` [H,W] of the backdrop (what the pictures are drawn
    over) and ``photo`` (it, as a PNG data URL); ``input`` [h,w], the model's input
    grid the running sums are built on; ``cmaps`` (:func:`colour_tables`); ``modes``
    (``alone``, ``cumulative``: the page's names of the two views); per slider position
    (lists of ``positions`` entries): ``alone`` (:func:`term_codes`, in units of the
    map's robust scale at the backdrop's size), ``partials`` (:func:`grid_partials`
    as :class:`Codes` in the map's own units), ``scale`` (the robust scale of
    "everything up to here" at the backdrop's size), ``captions`` (the layer caption,
    Markdown, for each view), ``chart`` (the chart's caption, HTML) and ``terms`` (the
    index of the position's term among all terms, as the chart's columns are).
    """
    backdrop = explanation.backdrop
    size = tuple(backdrop.shape[:2])
    alone = []
    for term in explanation.spatial_terms:
        assert term.map is not None  # spatial terms have maps
        alone.append(term_codes(term.map[0], robust_scale(term.map[0], size)).json())
    partials = []
    for partial in grid_partials(explanation):
        partials.append(quantise(partial, float(partial.max())).json())
    positions = range(explanation.positions)
    scales = [robust_scale(explanation.layer_map(k, True), size) for k in positions]
    return {
        "version": VERSION,
        "size": list(size),
        "input": list(explanation.result.saliency.shape[-2:]),
        "photo": png_data_url(backdrop),
        "cmaps": colour_tables(),
        "modes": {"alone": ALONE, "cumulative": CUMULATIVE},
        "positions": explanation.positions,
        "alone": alone,
        "partials": partials,
        "scale": scales,
        "captions": {
            mode: [layer_caption(explanation, k, mode) for k in positions] for mode in MODES
        },
        "chart": [chart_caption(explanation, k) for k in positions],
        "terms": list(explanation.term_indices),
    }


def payload_json(explanation: Explanation) -> str:
    """:func:`payload` as compact JSON text (what the page's hidden data box holds)."""
    return json.dumps(payload(explanation), separators=(",", ":"), allow_nan=False)


LIBRARY = (Path(__file__).with_name("canvas.js")).read_text(encoding="utf-8")
"""The browser code: defines ``window.tgradCanvas`` (load a payload, draw a view)."""


def _event_js(call: str) -> str:
    """An event's ``js=``: install :data:`LIBRARY` once, then ``call``."""
    return (
        "(data, layer, mode, opacity, cmap) => {\n"
        "if (!window.tgradCanvas) {\n" + LIBRARY + "\n}\n"
        f"return window.tgradCanvas.{call}(data, layer, mode, opacity, cmap);\n}}"
    )


LOAD_JS = _event_js("load")
"""``js=`` of the data box's change (inputs: data, layer, mode, opacity, colour map; no
output): decode the payload and draw the views."""
STEP_JS = _event_js("step")
"""``js=`` of a view control's change (same inputs; output: the layer caption): redraw
the views, the chart's and the grid's highlight, and return the caption."""

__all__ = [
    "CODES",
    "HEADROOM",
    "LOAD_JS",
    "STEP_JS",
    "Codes",
    "colour_tables",
    "grid_partials",
    "payload",
    "payload_json",
    "quantise",
    "robust_scale",
    "term_codes",
]
