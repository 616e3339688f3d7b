"""The Explain tab's drawing: the T-Grad overlay, the layer view at a slider position and
its caption, the grid of every layer's map (the paper's Fig. 2) and its figure, the
summary, the top-5 and the model picker's words. Every function here is cheap (no model
call): it is what the layer slider, the opacity slider and the mode toggle run."""

from __future__ import annotations

import html

import numpy as np

from explorer.chart import term_html, unmapped_words
from explorer.draw import map_overlay, share_text
from explorer.explanation import Explanation
from explorer.view import is_cumulative
from tgrad import viz
from tgrad.decompose import how_exact
from tgrad.models import MODEL_NAMES, LoadedModel, ModelInfo, exactness


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
        f"{value:+.3g} logit units = {share_text(explanation, value)}"
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
    """Markdown: which class is explained, how its logit splits, and how the split is
    exact (:func:`tgrad.decompose.how_exact`)."""
    terms = explanation.result.terms
    spatial = explanation.positions
    unmapped = len(terms) - spatial
    plural = "s" if unmapped != 1 else ""
    return (
        f"Explaining **{html.escape(explanation.target_label)}** with `{explanation.model}`: "
        f"logit **{explanation.logit:.3f}** (probability {100 * explanation.probability:.1f}%)"
        f" = input term + {spatial - 1} layer terms + {unmapped} "
        f"{unmapped_words(explanation)} term{plural} (no map); completeness gap "
        f"{explanation.gap:.1e}, {how_exact(terms)}."
    )


def exactness_tag(how: str) -> str:
    """The model picker's few words for :attr:`tgrad.models.ModelInfo.exactness`."""
    return "piecewise linear" if "piecewise linear" in how else "exact via intercepts"


def model_choice(info: ModelInfo) -> tuple[str, str]:
    """``(label, name)`` for the model picker: its name, how its decomposition is exact,
    and for a model that downloads on first use how much:
    ``"VGG-16 (the paper's model) · piecewise linear · 553 MB download on first use"``."""
    label = f"{info.label} · {exactness_tag(info.exactness)}" if info.exactness else info.label
    if info.available or info.download_bytes is None:
        return label, info.name
    return f"{label} · {info.download_bytes / 1e6:.0f} MB download on first use", info.name


def model_note(loaded: LoadedModel) -> str:
    """Markdown under the model picker: what the model is, once it is loaded, and how
    its decomposition is exact (:func:`tgrad.models.exactness`)."""
    parameters = sum(p.numel() for p in loaded.module.parameters())
    size = loaded.preprocessing.crop
    how = f"; {exactness(loaded.name)}" if loaded.name in MODEL_NAMES else ""
    return (
        f"`{loaded.name}`: ImageNet weights, {parameters / 1e6:.1f} M parameters, sees a "
        f"{size} x {size} px centre crop of the photo{how}."
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
