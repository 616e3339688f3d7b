"""Colour maps, overlays and figures: the one place that turns maps into pictures.

Maps come in as torch tensors [h,w] (any scale); pictures go out as ``uint8`` numpy
arrays [H,W,3] or matplotlib figures. Nothing here computes an explanation. Figures are
made with matplotlib's object API (``Figure``), not pyplot: no global figure registry to
leak from in a long-running server, no backend to choose.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from tgrad.tgrad import TGradResult, upsample

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


def share_label(result: TGradResult, term_index: int, sample: int = 0) -> str:
    """``"features.28 (Conv2d, 14x14): +1.23 = 12.3% of all terms"``.

    The share is the contribution over the sum of the absolute contributions of all
    terms (:func:`total_size`), not over the logit: it stays meaningful when the logit
    is small or negative (a term of +5 with a logit of -0.35 is not "-1428 %" of anything).
    """
    term = result.terms[term_index]
    value = float(term.contribution[sample])
    grid = f", {term.grid[0]}x{term.grid[1]}" if term.grid else ""
    kind = "" if term.kind == "input" else f" ({term.source or term.kind}{grid})"
    return f"{term.name}{kind}: {value:+.3g} = {share_text(value, total_size(result, sample))}"


def total_size(result: TGradResult, sample: int = 0) -> float:
    """The sum of the absolute contributions of all terms (logit units), what shares are of."""
    return float(sum(abs(float(t.contribution[sample])) for t in result.terms))


def share_text(value: float, total: float) -> str:
    """``"+12.3% of all terms"``: ``value`` as a signed percentage of ``total`` (a sum of
    absolute contributions)."""
    return f"{100 * value / total:+.1f}% of all terms" if total > 0 else "all terms are 0"


def layer_strip(
    result: TGradResult,
    image: torch.Tensor | np.ndarray,
    sample: int = 0,
    columns: int = 8,
    alpha: float = 0.5,
    cmap: str = DEFAULT_CMAP,
) -> Figure:
    """The paper's Fig. 2: every layer map over the image, then the T-Grad aggregate.

    Each panel is titled with the term's name, grid and share of the logit.
    """
    terms = result.spatial_terms
    panels = len(terms) + 1
    columns = min(columns, panels)
    rows = -(-panels // columns)
    fig = Figure(figsize=(2.2 * columns, 2.5 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, term in enumerate(terms):
        ax = axes.flat[i]
        ax.imshow(overlay(image, term.map[sample], alpha, cmap))
        grid = f"{term.grid[0]}x{term.grid[1]}"
        share = float(term.contribution[sample])
        ax.set_title(f"{term.name}\n{grid}  {share:+.3g}", fontsize=7)
    ax = axes.flat[len(terms)]
    ax.imshow(overlay(image, result.saliency[sample], alpha, cmap))
    ax.set_title("T-Grad (all layers)", fontsize=8, fontweight="bold")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95, wspace=0.05, hspace=0.3)
    return fig


def decomposition_chart(
    result: TGradResult,
    sample: int = 0,
    highlight: str | None = None,
    names: Sequence[str] | None = None,
) -> Figure:
    """One bar per term of the logit (input, each layer, classifier biases).

    Blue bars raise the logit, red ones lower it, bars of non-spatial terms (no map) are
    hatched; the term named ``highlight`` is drawn in orange (the current position). A
    legend says so. The x axis names each term by ``names`` (one per term, e.g. readable
    layer names; default the terms' own names). The title gives the logit and the
    completeness gap.
    """
    from matplotlib.patches import Patch

    terms = result.terms
    labels = [t.name for t in terms] if names is None else list(names)
    if len(labels) != len(terms):
        raise ValueError(f"{len(labels)} names for {len(terms)} terms")
    values = [float(t.contribution[sample]) for t in terms]
    colors = [
        "tab:orange" if t.name == highlight else ("tab:blue" if v >= 0 else "tab:red")
        for t, v in zip(terms, values, strict=True)
    ]
    fig = Figure(figsize=(max(6.0, 0.22 * len(labels) + 2), 3.2 if names is None else 4.6))
    ax = fig.subplots()
    bars = ax.bar(range(len(labels)), values, color=colors)
    for bar, term in zip(bars, terms, strict=True):
        if not term.spatial:
            bar.set_hatch("//")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_ylabel("contribution to the logit")
    ax.set_title(
        f"logit {float(result.logit[sample]):.4g} = sum of {len(labels)} terms "
        f"(gap {float(result.gap[sample]):.1e})",
        fontsize=9,
    )
    keys = [
        Patch(color="tab:blue", label="raises the logit"),
        Patch(color="tab:red", label="lowers it"),
        Patch(facecolor="white", edgecolor="grey", hatch="//", label="classifier bias (no map)"),
    ]
    if highlight is not None:
        keys.append(Patch(color="tab:orange", label="current position"))
    ax.legend(handles=keys, fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def colorbar(cmap: str = DEFAULT_CMAP, label: str | None = None) -> Figure:
    """A horizontal colour bar from 0 (low) to 1 (high) for the overlays, labelled with
    the colour map's name unless ``label`` says otherwise."""
    fig = Figure(figsize=(4, 0.9))
    ax = fig.add_axes((0.05, 0.55, 0.9, 0.35))  # room below for ticks and the label
    text = f"relative saliency (colour map: {cmap})" if label is None else label
    fig.colorbar(ScalarMappable(cmap=cmap), cax=ax, orientation="horizontal", label=text)
    return fig


@functools.lru_cache(maxsize=len(CMAPS))
def colorbar_pixels(cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """:func:`colorbar` rendered to uint8 [H,W,3] (cached: the same few pictures)."""
    buffer = io.BytesIO()
    colorbar(cmap).savefig(buffer, format="png", bbox_inches="tight", dpi=100)
    return np.asarray(Image.open(buffer).convert("RGB"))


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


def panel_grid(
    panels: Sequence[tuple[np.ndarray, str]],
    columns: int = 4,
    title_height: int = 22,
    gap: int = 6,
) -> np.ndarray:
    """Pictures of one size side by side, each under its title: uint8 [H,W,3]. A title
    may have several lines (``"\\n"``), which share ``title_height``; a line too long
    for the panel ends in an ellipsis.

    Drawn with Pillow, not matplotlib: a grid of twelve 224 px panels takes a few
    milliseconds, which matters when a page redraws it as each panel arrives.
    """
    if not panels:
        raise ValueError("panel_grid needs at least one panel")
    height, width = panels[0][0].shape[:2]
    columns = max(1, min(columns, len(panels)))
    rows = -(-len(panels) // columns)
    cell_w, cell_h = width + gap, height + title_height + gap
    canvas = Image.new("RGB", (columns * cell_w - gap, rows * cell_h - gap), "white")
    draw = ImageDraw.Draw(canvas)
    lines = max(1, max(title.count("\n") + 1 for _, title in panels))
    font = ImageFont.load_default(size=max(6, title_height // lines - 8))
    for index, (picture, title) in enumerate(panels):
        if picture.shape[:2] != (height, width):
            raise ValueError(f"panel {index} is {picture.shape[:2]}, not {(height, width)}")
        left, top = (index % columns) * cell_w, (index // columns) * cell_h
        for number, line in enumerate(title.split("\n")):
            while draw.textlength(line, font=font) > width - 4 and len(line) > 1:
                line = line[:-2] + "…"
            y = top + 2 + number * (title_height // lines)
            draw.text((left + 2, y), line, fill="black", font=font)
        canvas.paste(Image.fromarray(picture), (left, top + title_height))  # over any descender
    return np.asarray(canvas)


def with_colorbar(picture: np.ndarray, cmap: str = DEFAULT_CMAP, gap: int = 6) -> np.ndarray:
    """``picture`` (uint8 [H,W,3]) with the colour bar of ``cmap`` (:func:`colorbar_pixels`)
    under it, left-aligned on white: a figure that says what its colours mean."""
    bar = colorbar_pixels(cmap)
    width = max(picture.shape[1], bar.shape[1])
    canvas = np.full((picture.shape[0] + gap + bar.shape[0], width, 3), 255, np.uint8)
    canvas[: picture.shape[0], : picture.shape[1]] = picture
    canvas[picture.shape[0] + gap :, : bar.shape[1]] = bar
    return canvas


def curves_figure(
    fractions: torch.Tensor,
    curves: Mapping[str, torch.Tensor],
    areas: Mapping[str, float],
    title: str,
    ylabel: str = "probability of the class",
) -> Figure:
    """Insertion or deletion curves (SPEC 4), one line per method, its AUC in the legend.

    Args:
        fractions: [n+1] fraction of pixels changed (the x axis, 0 to 1).
        curves: label -> [n+1] score after each step.
        areas: label -> the curve's area (AUC), shown in the legend.
    """
    fig = Figure(figsize=(5.2, 3.6))
    ax = fig.subplots()
    x = fractions.detach().cpu().numpy()
    for label, curve in curves.items():
        ax.plot(x, curve.detach().cpu().numpy(), label=f"{label} (AUC {areas[label]:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("fraction of pixels changed")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def thumbnail(pixels: np.ndarray, size: int) -> np.ndarray:
    """A uint8 [H,W,3] picture resized (bilinear) to ``size`` x ``size``."""
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))


SANITY_ALPHA = 0.6
"""Opacity of the sanity check's maps over the photo."""
PENDING_GREY = 235
"""The grey of a panel whose picture is still to come."""
SANITY_COLUMNS = 10
"""Steps side by side in a sanity grid; more steps wrap into further bands of rows, so
that the grid stays about 1150 px wide and its titles legible when a page shows it."""
SANITY_TITLE = 22
"""Height of a sanity panel's title strip in pixels (a 14 px font)."""
MEASURE_TITLES: dict[str, str] = {
    "spearman_abs": "Spearman rank correlation of |map|",
    "spearman": "Spearman rank correlation",
    "ssim": "SSIM (structural similarity)",
    "hog_spearman": "Spearman of HOG features (edges)",
}
"""The readable name of each similarity measure of :data:`tgrad.sanity.MEASURES`."""


def sanity_grid(
    groups: Sequence[str],
    maps: Mapping[str, Sequence[torch.Tensor]],
    size: int = 112,
    backdrop: np.ndarray | None = None,
    cmap: str = DEFAULT_CMAP,
) -> np.ndarray:
    """The maps of a sanity check (SPEC 5; the paper's Fig. 6): one row per method, one
    column per step, at most :data:`SANITY_COLUMNS` steps a row (more steps continue in
    another band of one row per method, under the first).

    Args:
        groups: the steps: ``"original"``, then the group randomized at each step.
        maps: row label (a method) -> one map [h,w] per step so far (any scale,
            non-negative); a row shorter than ``groups`` ends in grey panels (steps still
            to come).
        size: the side of each panel in pixels (maps are resized bilinearly).
        backdrop: the photo, uint8 [H,W,3], to draw the maps over (at
            :data:`SANITY_ALPHA`); None: the maps alone.
    Returns:
        uint8 [H,W,3]; each map scaled by its own 99th percentile
        (:func:`robust_normalize`), since a randomized model's maps differ in scale.
        Panels are titled ``"<label> · original"``, then ``"<step>: <group>"`` (the
        first panel of a row in a later band: ``"<label> · <step>: <group>"``).
    """
    base = None
    if backdrop is not None:
        base = thumbnail(backdrop, size)
    blank = np.full((size, size, 3), PENDING_GREY, np.uint8)
    empty = np.full((size, size, 3), 255, np.uint8)
    columns = min(SANITY_COLUMNS, len(groups))
    bands = -(-len(groups) // columns)
    panels = []
    for band in range(bands):
        for label, row in maps.items():
            if len(row) > len(groups):
                raise ValueError(f"{label} has {len(row)} maps for {len(groups)} steps")
            for index in range(band * columns, (band + 1) * columns):
                if index >= len(groups):
                    panels.append((empty, ""))
                    continue
                title = f"{label} · original" if index == 0 else f"{index}: {groups[index]}"
                if index == band * columns and index > 0:
                    title = f"{label} · {title}"
                if index >= len(row):
                    panels.append((blank, title))
                    continue
                small = upsample(row[index].detach().float()[None], (size, size))[0]
                heat = colorize_unit(robust_normalize(small), cmap)
                picture = heat if base is None else blend(base, heat, SANITY_ALPHA)
                panels.append((picture, title))
    return panel_grid(panels, columns=columns, title_height=SANITY_TITLE, gap=3)


def sanity_curves(
    groups: Sequence[str],
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    title: str = "",
) -> Figure:
    """The sanity check's curves (SPEC 5; the paper's Fig. 6, right): the similarity of
    each method's map to the original model's against the randomized groups, one panel
    per measure (titled with its name, :data:`MEASURE_TITLES`), one line per method.

    Args:
        groups: the x axis: ``"original"``, then the group randomized at each step.
        curves: measure -> method -> one similarity per step so far (e.g. a mean over
            images; shorter than ``groups`` while a run goes on).
        title: above the panels (none when empty).
    """
    width = max(5.0, 0.32 * len(groups) + 2.0) if len(curves) == 1 else 3.6 * len(curves)
    fig = Figure(figsize=(width, 4.2))
    axes = np.atleast_1d(fig.subplots(1, len(curves), sharey=True))
    for ax, (measure, by_method) in zip(axes, curves.items(), strict=True):
        for method, values in by_method.items():
            steps = np.arange(len(values))
            ax.plot(steps, np.asarray(values, dtype=float), marker="o", ms=3, label=method)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(groups)), list(groups), rotation=90, fontsize=7)
        ax.set_xlim(-0.5, len(groups) - 0.5)
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(MEASURE_TITLES.get(measure, measure), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("similarity to the original map", fontsize=9)
    if len(curves) == 1:
        axes[0].set_xlabel("randomized up to this group (from the output towards the input)")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def method_grid(
    images: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    row_labels: Sequence[str] | None = None,
    alpha: float = 0.5,
    cmap: str = DEFAULT_CMAP,
) -> Figure:
    """The paper's Fig. 1: one row per image, the image then one column per method.

    Args:
        images: [B,3,H,W] in [0,1] (pixel space).
        maps: method name -> raw maps [B,h,w]; each map is min-max normalised on its own.
        row_labels: one label per image (e.g. its file and class), shown left of the row.
    """
    batch = images.shape[0]
    columns = len(maps) + 1
    fig = Figure(figsize=(1.9 * columns, 1.9 * batch + 0.4))
    axes = fig.subplots(batch, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i in range(batch):
        axes[i, 0].imshow(to_uint8_image(images[i]))
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=7)
        for j, saliency in enumerate(maps.values(), 1):
            axes[i, j].imshow(overlay(images[i], saliency[i], alpha, cmap))
    axes[0, 0].set_title("image", fontsize=9)
    for j, name in enumerate(maps, 1):
        axes[0, j].set_title(name, fontsize=9)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.01, top=0.93, wspace=0.04, hspace=0.04)
    return fig


def method_times(methods: Sequence[str], ms_per_image: Sequence[float], title: str = "") -> Figure:
    """The paper's Fig. 3: the time of each method's map, in ms per image (log scale)."""
    fig = Figure(figsize=(max(4.5, 0.6 * len(methods) + 1.5), 3.6))
    ax = fig.subplots()
    values = np.asarray(ms_per_image, dtype=float)
    bars = ax.bar(np.arange(len(methods)), values, color="tab:blue")
    ax.bar_label(bars, [f"{v:.3g}" for v in values], fontsize=7)
    ax.set_xticks(np.arange(len(methods)), methods, rotation=45, ha="right", fontsize=8)
    if len(values) and np.all(values > 0):
        ax.set_yscale("log")
    ax.set_ylabel("ms per image")
    ax.set_title(title or "time per method", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def method_scores(
    methods: Sequence[str], scores: Mapping[str, Sequence[float]], title: str = ""
) -> Figure:
    """The paper's Fig. 4: grouped bars per method, one per score (e.g. insertion,
    deletion and insertion - deletion AUCs, means over images)."""
    fig = Figure(figsize=(max(5.0, 0.9 * len(methods) + 1.5), 3.8))
    ax = fig.subplots()
    where = np.arange(len(methods))
    width = 0.8 / max(1, len(scores))
    for i, (label, values) in enumerate(scores.items()):
        offset = (i - (len(scores) - 1) / 2) * width
        ax.bar(where + offset, np.asarray(values, dtype=float), width, label=label)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(where, methods, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("AUC")
    ax.set_title(title or "insertion / deletion", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
