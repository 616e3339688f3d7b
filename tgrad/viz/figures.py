"""matplotlib figures (the object API, ``Figure``, never pyplot: no global figure registry
to leak from in a long-running server): layer maps, the decomposition chart, colour bars,
curves, the method grid and the evaluation's charts; and the shares they print."""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from PIL import Image

from tgrad.tgrad import TGradResult
from tgrad.viz.colours import CMAPS, DEFAULT_CMAP, overlay, to_uint8_image


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


MEASURE_TITLES: dict[str, str] = {
    "spearman_abs": "Spearman rank correlation of |map|",
    "spearman": "Spearman rank correlation",
    "ssim": "SSIM (structural similarity)",
    "hog_spearman": "Spearman of HOG features (edges)",
}
"""The readable name of each similarity measure of :data:`tgrad.sanity.MEASURES`."""


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
