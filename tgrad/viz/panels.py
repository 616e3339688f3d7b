"""Pictures drawn with Pillow (not matplotlib, so a page can redraw them as each panel
arrives): grids of titled panels, a picture with its colour bar, the sanity check's grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from tgrad.tgrad import upsample
from tgrad.viz.colours import DEFAULT_CMAP, blend, colorize_unit, robust_normalize, thumbnail
from tgrad.viz.figures import colorbar_pixels


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


SANITY_ALPHA = 0.6
"""Opacity of the sanity check's maps over the photo."""


PENDING_GREY = 235
"""The grey of a panel whose picture is still to come."""


SANITY_COLUMNS = 10
"""Steps side by side in a sanity grid; more steps wrap into further bands of rows, so
that the grid stays about 1150 px wide and its titles legible when a page shows it."""


SANITY_TITLE = 22
"""Height of a sanity panel's title strip in pixels (a 14 px font)."""


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
