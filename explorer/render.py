"""Turning a cached :class:`~explorer.session.Explanation` into what the page shows.

Every function here is cheap (no model call): it is what the layer slider, the opacity
slider and the mode toggle run on each step. Pictures are drawn by :mod:`tgrad.viz`; the
only drawing done here is the decomposition chart, which is HTML (CSS bars) because a
matplotlib figure costs 0.3 to 0.5 s per step.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from explorer.session import (
    SANITY_MAP_SIZE,
    Explanation,
    MethodMap,
    MethodScore,
    SanityRun,
    method_label,
)
from tgrad import viz
from tgrad.models import LoadedModel, ModelInfo
from tgrad.tgrad import upsample

ALONE = "this layer alone"
CUMULATIVE = "everything up to here"
MODES = (ALONE, CUMULATIVE)
QUERY_MODES = {"alone": ALONE, "cumulative": CUMULATIVE}
"""The ``mode`` values of a link (:mod:`explorer.share`) and the view each stands for."""


def is_cumulative(mode: str | None) -> bool:
    return mode == CUMULATIVE


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


def saliency_overlay(
    explanation: Explanation, alpha: float, cmap: str = viz.DEFAULT_CMAP
) -> np.ndarray:
    """The full T-Grad saliency over the photo the model saw, drawn large: uint8 [H,W,3]."""
    return map_overlay(explanation.backdrop, explanation.result.saliency[0], alpha, cmap)


def layer_overlay(
    explanation: Explanation,
    position: int,
    mode: str | None,
    alpha: float,
    cmap: str = viz.DEFAULT_CMAP,
) -> np.ndarray:
    """The map at a slider position (alone or accumulated) over the photo, drawn large:
    uint8 [H,W,3]."""
    layer = explanation.layer_map(position, is_cumulative(mode))
    return map_overlay(explanation.backdrop, layer, alpha, cmap)


def _alpha(alpha: float | None) -> float:
    return min(max(float(0.5 if alpha is None else alpha), 0.0), 1.0)


def _share(explanation: Explanation, value: float) -> str:
    return viz.share_text(value, explanation.total_size)


def term_html(explanation: Explanation, term_index: int) -> str:
    """A term's readable name, its module path (and what the module is) as a tooltip."""
    title = html.escape(explanation.title(term_index))
    if not explanation.labels:
        return title
    label = explanation.labels[term_index]
    tip = html.escape(f"{label.path}: {label.detail}" if label.detail else label.path)
    return f'<span title="{tip}">{title}</span>'


def layer_caption(explanation: Explanation, position: int, mode: str | None) -> str:
    """Markdown: ``Position k / n (layer map): Block 2 · depthwise conv · 56 x 56:
    +0.41 logit units = +1.2% of all terms``, then what the picture shows."""
    term_index = explanation.term_indices[position]
    term = explanation.result.terms[term_index]
    last = explanation.positions - 1
    what = "input term" if term_index == 0 else "layer map"  # the input term comes first
    value = float(term.contribution[0])
    lines = [
        f"**Position {position} / {last}** ({what}): {term_html(explanation, term_index)}: "
        f"{value:+.3g} logit units = {_share(explanation, value)}"
    ]
    if value <= 0 and is_cumulative(mode):
        lines.append(
            "This term pushes the logit *down*, so its T-Grad weight is 0: the running "
            "total shown is the same as at the previous position."
        )
    elif value <= 0:
        lines.append(
            "This term pushes the logit *down*, so its T-Grad weight is 0: its map is "
            "drawn here but adds nothing to the T-Grad map."
        )
    if is_cumulative(mode):
        scores = [float(t.score[0]) for t in explanation.spatial_terms]
        total = sum(scores)
        so_far = sum(scores[: position + 1])
        share = f"{100 * so_far / total:.1f}%" if total > 0 else "n/a"
        lines.append(
            f"Showing the T-Grad map built from positions 0 to {position}: "
            f"{share} of its total weight."
            + (" This is the full T-Grad map." if position == last else "")
        )
    else:
        lines.append(
            "Showing this term's own map: where it adds to the logit (its positive part, "
            "summed over the layer's channels)."
        )
    return "\n\n".join(lines)


GALLERY_SIZE = 112
"""Side in pixels of each picture of the layer grid (the paper's Fig. 2)."""
FIGURE_SIZE = 160
"""Side in pixels of each map of the layer grid in the figures zip."""
FIGURE_COLUMNS = 8


def _layer_pictures(
    explanation: Explanation, cmap: str, size: int
) -> list[tuple[int, np.ndarray, str]]:
    """For each slider position: (its term's index, its own map over the photo at
    ``size`` px, its share of all terms as ``"+1.2%"``)."""
    base = viz.thumbnail(explanation.pixels, size)
    total = explanation.total_size
    pictures = []
    for term_index in explanation.term_indices:
        term = explanation.result.terms[term_index]
        assert term.map is not None  # spatial terms have maps
        value = float(term.contribution[0])
        share = f"{100 * value / total:+.1f}%" if total > 0 else "0"
        pictures.append((term_index, map_overlay(base, term.map[0], 0.6, cmap), share))
    return pictures


def layer_gallery(
    explanation: Explanation, cmap: str = viz.DEFAULT_CMAP
) -> list[tuple[np.ndarray, str]]:
    """The paper's Fig. 2: every slider position's own map over the photo, small, in
    slider order, each captioned with its position and its share, ``"4 · +1.2%"`` (a
    click on picture k moves the slider to k, where the caption names the layer)."""
    pictures = _layer_pictures(explanation, cmap, GALLERY_SIZE)
    return [(picture, f"{k} · {share}") for k, (_, picture, share) in enumerate(pictures)]


def layer_figure(explanation: Explanation, cmap: str = viz.DEFAULT_CMAP) -> np.ndarray:
    """The layer grid as a figure: every map titled with its position and readable name
    (``"4 · Block 2 · expand conv"``) over its grid and share, and the colour bar of
    ``cmap`` under them: uint8 [H,W,3]."""
    panels = []
    pictures = _layer_pictures(explanation, cmap, FIGURE_SIZE)
    for position, (term_index, picture, share) in enumerate(pictures):
        parts = explanation.title(term_index).split(" · ")
        size = parts.pop() if len(parts) > 1 and " x " in parts[-1] else ""
        name = " · ".join(parts)
        panels.append((picture, f"{position} · {name}\n{size} · {share}".replace("\n · ", "\n")))
    grid = viz.panel_grid(panels, columns=FIGURE_COLUMNS, title_height=36, gap=6)
    return viz.with_colorbar(grid, cmap)


def summary(explanation: Explanation) -> str:
    """Markdown: which class is explained and how its logit splits."""
    terms = explanation.result.terms
    spatial = explanation.positions
    classifier = len(terms) - spatial
    return (
        f"Explaining **{html.escape(explanation.target_label)}** with `{explanation.model}`: "
        f"logit **{explanation.logit:.3f}** (probability {100 * explanation.probability:.1f}%)"
        f" = input term + {spatial - 1} layer terms + {classifier} classifier bias "
        f"term{'s' if classifier != 1 else ''}; completeness gap {explanation.gap:.1e}."
    )


def model_choice(info: ModelInfo) -> tuple[str, str]:
    """``(label, name)`` for the model picker; a model that downloads on first use says
    how much: ``"VGG-16 (the paper's model) · 528 MB download on first use"``."""
    if info.available or info.download_bytes is None:
        return info.label, info.name
    return f"{info.label} · {info.download_bytes / 1e6:.0f} MB download on first use", info.name


def model_note(loaded: LoadedModel) -> str:
    """Markdown under the model picker: what the model is, once it is loaded."""
    parameters = sum(p.numel() for p in loaded.module.parameters())
    size = loaded.preprocessing.crop
    return (
        f"`{loaded.name}`: ImageNet weights, {parameters / 1e6:.1f} M parameters, sees a "
        f"{size} x {size} px centre crop of the photo."
    )


EXPLAINED_MARK = " ← explained"


def top5_label(explanation: Explanation) -> dict[str, float]:
    """For ``gr.Label``: ``{"967: espresso ← explained": 0.95, "968: cup": 0.02, ...}``:
    the five most probable classes, the explained one marked when it is among them."""
    return {
        f"{index}: {name}" + (EXPLAINED_MARK if index == explanation.target else ""): prob
        for index, name, prob in explanation.top5()
    }


def overlay_title(explanation: Explanation) -> str:
    """The saliency overlay's label: which class it explains, with which model."""
    return f"T-Grad saliency for {explanation.target_label} ({explanation.model})"


def decomposition(explanation: Explanation) -> dict[str, Any]:
    """The logit's terms as plain JSON (what the ``/explain`` API returns).

    ``contribution`` is in logit units; ``share`` is ``contribution / total_size``, with
    ``total_size`` the sum of the absolute contributions of all terms (a signed fraction
    that stays meaningful when the logit is small or negative; None when every term is
    0); ``grid`` is [h, w] or None for a non-spatial (classifier) term. The contributions
    plus ``gap`` sum to ``logit``.
    """
    logit = explanation.logit
    total = explanation.total_size
    rows = []
    for term in explanation.result.terms:
        value = float(term.contribution[0])
        rows.append(
            {
                "term": term.name,
                "kind": term.kind,
                "grid": list(term.grid) if term.grid else None,
                "contribution": value,
                "share": value / total if total else None,
            }
        )
    return {
        "model": explanation.model,
        "target": _target(explanation),
        "logit": logit,
        "probability": explanation.probability,
        "gap": explanation.gap,
        "total_size": total,
        "terms": rows,
    }


_DIM_KEY = '<span><i class="tg-key tg-pos tg-dim"></i>not yet included</span>'

CHART_CSS = """
.tg-chart { margin: 0; padding-top: 1.6em; font-size: var(--text-sm, 14px); }
.tg-chart figcaption { margin-bottom: 6px; }
.tg-frame { display: flex; gap: 6px; align-items: stretch; }
.tg-yaxis { position: relative; height: 190px; font-size: 11px; min-width: 3.5em;
  color: var(--body-text-color-subdued, #666); }
.tg-yaxis span { position: absolute; right: 0; transform: translateY(50%); line-height: 1; }
.tg-plot { position: relative; flex: 1; height: 190px; display: flex; gap: 1px;
  border-left: 1px solid var(--border-color-primary, #ccc);
  border-bottom: 1px solid var(--border-color-primary, #ccc); }
.tg-zero { position: absolute; left: 0; right: 0; height: 0;
  border-top: 1px solid var(--body-text-color, #333); pointer-events: none; }
.tg-col { position: relative; flex: 1; min-width: 2px; height: 100%; }
.tg-col[data-pos] { cursor: pointer; }
.tg-col[data-pos]:hover { background: rgba(255, 127, 14, 0.15); }
.tg-bar { position: absolute; left: 0; right: 0; min-height: 1px; }
.tg-pos { background: #1f77b4; }
.tg-neg { background: #d62728; }
.tg-ns { background: repeating-linear-gradient(45deg, #7f7f7f 0 3px, #d9d9d9 3px 6px); }
.tg-dim { opacity: 0.3; }
.tg-cur { background: #ff7f0e; outline: 2px solid #ff7f0e; outline-offset: 1px; z-index: 1; }
.tg-xaxis { display: flex; justify-content: space-between; margin-left: calc(3.5em + 6px);
  font-size: 11px; color: var(--body-text-color-subdued, #666); }
.tg-legend { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 6px; font-size: 12px; }
.tg-key { display: inline-block; width: 12px; height: 12px; vertical-align: middle;
  margin-right: 4px; }
.tg-chart details { margin-top: 8px; }
.tg-chart table { font-size: 12px; border-collapse: collapse; }
.tg-chart td, .tg-chart th { padding: 1px 8px; text-align: right; }
.tg-chart td:first-child, .tg-chart th:first-child,
.tg-chart td:nth-child(2), .tg-chart th:nth-child(2) { text-align: left; }
.tg-chart tr[aria-current] { background: #ffe0b2; font-weight: bold; }
"""
"""Styles of :func:`chart_html`, scoped to its ``gr.HTML`` through ``css_template``."""

ADDRESS_BAR_JS = """
(query, layer, mode, cmap) => {
  if (!query) return window.location.href;
  const params = new URLSearchParams(query);
  const modes = MODES;
  params.set('layer', String(layer));
  if (mode in modes) params.set('mode', modes[mode]);
  params.set('cmap', cmap);
  const url = new URL(window.location.href);
  url.search = '?' + params.toString();
  window.history.replaceState(null, '', url);
  return url.toString();
}
""".replace("MODES", json.dumps({shown: name for name, shown in QUERY_MODES.items()}))
"""Puts the view's link in the address bar and returns it for the page's link box: the
server's query string for the explanation shown (:func:`explorer.share.view_query`),
with the slider position, view and colour map as they are now in the page."""

CHART_JS = """
element.addEventListener('click', (event) => {
  const column = event.target.closest('[data-pos]');
  if (column) trigger('select', {index: Number(column.dataset.pos), value: column.title});
});
"""
"""The chart's ``js_on_load``: a click on a bar with a map sends its slider position as a
``select`` event (the handler checks it like any other value from the page)."""


def chart_caption(explanation: Explanation, position: int) -> str:
    """The chart's caption (HTML): the logit, its terms and the gap, the term at slider
    ``position`` (highlighted) with its value and share, and what shares are of."""
    terms = explanation.result.terms
    current = explanation.term_indices[position]
    value = float(terms[current].contribution[0])
    return (
        f"Logit {explanation.logit:.3f} = sum of {len(terms)} terms (completeness gap "
        f"{explanation.gap:.1e}). Highlighted: <b>{term_html(explanation, current)}</b>, "
        f"{value:+.3f} logit units ({_share(explanation, value)}). Shares are of the sum "
        f"of the absolute sizes of all terms, {explanation.total_size:.3f}, which stays "
        "meaningful when the logit is small or negative."
    )


def chart_html(explanation: Explanation, position: int, mode: str | None) -> str:
    """One bar per term of the logit, the term at ``position`` highlighted, as HTML.

    Blue: pushes the logit up; red: down; hatched grey: non-spatial classifier biases
    (no map); orange: the slider's term. In "everything up to here" mode the terms not
    yet included are faded. A table with every number follows, for screen readers.
    """
    result = explanation.result
    terms = result.terms
    values = [float(t.contribution[0]) for t in terms]
    logit = explanation.logit
    current = explanation.term_indices[position]
    caption = chart_caption(explanation, position)
    cumulative = is_cumulative(mode)
    top = max(0.0, *values)
    bottom = min(0.0, *values)
    span = (top - bottom) or 1.0
    zero = -bottom / span * 100
    positions = {term_index: k for k, term_index in enumerate(explanation.term_indices)}

    columns = []
    rows = []
    for index, (term, value) in enumerate(zip(terms, values, strict=True)):
        height = abs(value) / span * 100
        base = zero if value >= 0 else zero - height
        classes = ["tg-bar", "tg-pos" if value >= 0 else "tg-neg"]
        if not term.spatial:
            classes.append("tg-ns")
        if index == current:
            classes.append("tg-cur")
        elif cumulative and term.spatial and index > current:
            classes.append("tg-dim")
        grid = f"{term.grid[0]}x{term.grid[1]}" if term.grid else "no map"
        title = explanation.title(index)
        tip = f"{title} ({term.name}): {value:+.4g} = {_share(explanation, value)}"
        position = positions.get(index)
        jump = "" if position is None else f' data-pos="{position}"'
        columns.append(
            f'<div class="tg-col"{jump} title="{html.escape(tip)}">'
            f'<div class="{" ".join(classes)}" '
            f'style="bottom:{base:.3f}%;height:{height:.3f}%"></div></div>'
        )
        mark = ' aria-current="true"' if index == current else ""
        rows.append(
            f"<tr{mark}><td>{html.escape(title)}</td><td>{html.escape(term.name)}</td>"
            f"<td>{grid}</td><td>{value:+.4f}</td><td>{_share(explanation, value)}</td></tr>"
        )

    value = values[current]
    spatial = explanation.positions
    label = (
        f"Bar chart of the {len(terms)} terms of the logit {logit:.3f}: the input term, "
        f"{spatial - 1} layer bias terms and {len(terms) - spatial} classifier bias terms. "
        f"Largest {top:+.3f}, smallest {bottom:+.3f}. Highlighted: "
        f"{explanation.title(current)}, {value:+.3f}. Click a bar to show its map."
    )
    return (
        '<figure class="tg-chart">'
        f"<figcaption>{caption}</figcaption>"
        '<div class="tg-frame">'
        '<div class="tg-yaxis" aria-hidden="true">'  # each label at its value's height
        f'<span style="bottom:100%">{top:+.2f}</span>'
        f'<span class="tg-zero-label" style="bottom:{zero:.3f}%">0</span>'
        f'<span style="bottom:0%">{bottom:+.2f}</span></div>'
        f'<div class="tg-plot" role="img" aria-label="{html.escape(label)}">'
        f'<div class="tg-zero" style="bottom:{zero:.3f}%"></div>'
        + "".join(columns)
        + "</div></div>"
        '<div class="tg-xaxis" aria-hidden="true"><span>input</span>'
        "<span>layers, in forward order →</span><span>classifier</span></div>"
        '<div class="tg-legend" aria-hidden="true">'
        '<span><i class="tg-key tg-pos"></i>raises the logit</span>'
        '<span><i class="tg-key tg-neg"></i>lowers it</span>'
        '<span><i class="tg-key tg-ns"></i>classifier bias (no map)</span>'
        '<span><i class="tg-key tg-cur"></i>current position</span>'
        + (_DIM_KEY if cumulative else "")
        + "</div>"
        "<details><summary>Every term as a table</summary><table>"
        "<thead><tr><th>term</th><th>module</th><th>grid</th><th>contribution</th>"
        "<th>share</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></details>"
        "</figure>"
    )


# ----------------------------------------------------------------------- the Compare tab

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

_PENDING_GREY = viz.PENDING_GREY
STOPPED = "stopped"
"""How a view marks what a stopped run did not compute (never an error)."""


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _panel_title(found: MethodMap) -> str:
    shared = "shared " if found.shared_with > 1 else ""
    return f"{method_label(found.method)} · {shared}{_duration(found.seconds)}"


def compare_grid(
    explanation: Explanation,
    methods: Sequence[str],
    done: Mapping[str, MethodMap],
    stopped: Sequence[str] = (),
    cmap: str = viz.DEFAULT_CMAP,
) -> np.ndarray:
    """The photo, then one overlay per method in ``cmap`` (a grey panel for one still to
    come, or "stopped"), the colour bar under them: uint8 [H,W,3]. Every map gets
    :data:`NORMALISATION`."""
    pixels = explanation.pixels
    blank = np.full_like(pixels, _PENDING_GREY)
    panels = [(pixels, f"Photo · class {explanation.target_label}")]
    for method in methods:
        found = done.get(method)
        if found is None:
            state = STOPPED if method in stopped else "computing…"
            panels.append((blank, f"{method_label(method)} · {state}"))
            continue
        heat = viz.colorize_unit(viz.robust_normalize(found.map), cmap)
        panels.append((viz.blend(pixels, heat, COMPARE_ALPHA), _panel_title(found)))
    return viz.with_colorbar(viz.panel_grid(panels, columns=COMPARE_COLUMNS), cmap)


def compare_timings(
    explanation: Explanation,
    methods: Sequence[str],
    done: Mapping[str, MethodMap],
    stopped: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``/compare`` API's JSON: for each method its status (``done``, ``pending``
    or ``stopped``) and time in milliseconds (for methods computed in one shared pass,
    the time of that pass and how many shared it), plus the model, the class and the
    normalisation of the grid."""
    rows = {}
    for method in methods:
        found = done.get(method)
        if found is None:
            rows[method] = {"status": STOPPED if method in stopped else "pending"}
            continue
        rows[method] = {
            "status": "done",
            "ms": round(found.seconds * 1000, 3),
            "shared_pass_of": found.shared_with,
            "layer": found.layer,
        }
    return {
        "model": explanation.model,
        "target": _target(explanation),
        "normalisation": NORMALISATION,
        "methods": rows,
    }


def _target(explanation: Explanation) -> dict[str, Any]:
    return {"index": explanation.target, "name": explanation.categories[explanation.target]}


# ---------------------------------------------------------------------- the Evaluate tab

SCORE_COLUMNS = (
    "method",
    "insertion AUC ↑",
    "deletion AUC ↓",
    "insertion - deletion ↑",
    "Average Drop % ↓",
    "Increase in Confidence % ↑",
    "steps",
    "metrics time (s)",
)
"""The Evaluate table's columns (the ``/evaluate`` API's headers)."""


def score_curves(
    explanation: Explanation, methods: Sequence[str], done: Mapping[str, MethodScore], which: str
) -> Figure | None:
    """The insertion (``which="insertion"``) or deletion curves of the scored methods,
    titled with the class they follow."""
    scored = [m for m in methods if m in done]
    if not scored:
        return None
    first = done[scored[0]]
    how = "put back first" if which == "insertion" else "removed first"
    title = (
        f"{which.capitalize()} for {explanation.target_label} ({first.n_steps} steps):\n"
        f"most salient pixels {how}"
    )
    return viz.curves_figure(
        first.fractions,
        {method_label(m): getattr(done[m], which) for m in scored},
        {method_label(m): getattr(done[m], f"{which}_auc") for m in scored},
        title,
        ylabel=f"probability of {explanation.categories[explanation.target]}",
    )


def score_table(
    methods: Sequence[str], done: Mapping[str, MethodScore], stopped: Sequence[str] = ()
) -> list[list[Any]]:
    """One row per scored method, in the order of :data:`SCORE_COLUMNS`; a method a
    stopped run did not score has a row that says so."""
    rows = []
    for m in methods:
        if m in done:
            rows.append(
                [
                    method_label(m),
                    round(done[m].insertion_auc, 4),
                    round(done[m].deletion_auc, 4),
                    round(done[m].insertion_minus_deletion, 4),
                    round(done[m].average_drop, 2),
                    round(done[m].increase, 1),
                    done[m].n_steps,
                    round(done[m].seconds, 2),
                ]
            )
        elif m in stopped:
            rows.append([f"{method_label(m)} · {STOPPED}", *[None] * (len(SCORE_COLUMNS) - 1)])
    return rows


def evaluation(
    explanation: Explanation,
    methods: Sequence[str],
    done: Mapping[str, MethodScore],
    stopped: Sequence[str] = (),
) -> tuple[Figure | None, Figure | None, list[list[Any]]]:
    """What the Evaluate tab shows: (insertion plot, deletion plot, table)."""
    return (
        score_curves(explanation, methods, done, "insertion"),
        score_curves(explanation, methods, done, "deletion"),
        score_table(methods, done, stopped),
    )


# ------------------------------------------------------------------------ the Sanity tab


def _sanity_titles(run: SanityRun, stopped: bool = False) -> list[str]:
    """The steps of a run: "original", each group randomized so far by its readable
    name, then "…" for the steps to come ("stopped" once the run was stopped)."""
    names = run.names or tuple(step.group for step in run.steps[1:])
    pending = run.groups + 1 - len(run.steps)
    done = ["original", *names[: max(0, len(run.steps) - 1)]]
    return done + [STOPPED if stopped else "…"] * pending


def sanity_grid(explanation: Explanation, run: SanityRun, stopped: bool = False) -> np.ndarray:
    """The paper's Fig. 6 (:func:`tgrad.viz.sanity_grid`) over the photo: one row per
    method, one column per step (in bands of :data:`tgrad.viz.SANITY_COLUMNS`); a grey
    panel for a step still to come, or "stopped"."""
    maps = {method_label(m): [step.maps[m] for step in run.steps] for m in run.methods}
    titles = _sanity_titles(run, stopped)
    return viz.sanity_grid(titles, maps, SANITY_MAP_SIZE, explanation.pixels)


def sanity_curves(run: SanityRun, measure: str) -> Figure:
    """Similarity to the original map against the randomized groups, one line per method
    (:func:`tgrad.viz.sanity_curves` for one measure), titled with the measure's name
    and ticked with the groups' readable names."""
    groups = _sanity_titles(run)
    ticks = [groups[0], *(f"{i}: {g}" for i, g in enumerate(groups[1:], 1))]
    curves = {
        method_label(m): [step.similarity[m][measure] for step in run.steps] for m in run.methods
    }
    return viz.sanity_curves(ticks, {measure: curves})


def sanity_numbers(
    explanation: Explanation, run: SanityRun, stopped: bool = False
) -> dict[str, Any]:
    """The ``/sanity`` API's JSON: the run's status (``running``, ``done`` or
    ``stopped``), then each step's group (module names and readable name) and every
    similarity."""
    names = ("original", *run.names)
    return {
        "model": explanation.model,
        "target": _target(explanation),
        "groups": run.groups,
        "status": STOPPED if stopped else "done" if run.complete else "running",
        "steps": [
            {
                "group": step.group,
                "name": names[index] if index < len(names) else step.group,
                "seconds": round(step.seconds, 3),
                "similarity": step.similarity,
            }
            for index, step in enumerate(run.steps)
        ],
    }
