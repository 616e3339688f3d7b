"""Taking a view of the Explain tab away: a link that reopens it, and its figures in a zip.

A link carries the view in its query string, e.g.
``?photo=coffee&model=efficientnet_lite0&class=967&layer=20&mode=cumulative&cmap=jet``
(the photo by name when it is one of the bundled ones; an upload has no name to give, and
its link says ``photo=upload``: whoever opens it is asked to upload the photo again).
:func:`parse_query` reads such a link back, trusting nothing: every value is checked
against what the page offers, and what does not pass is named and ignored.

Nothing here imports Gradio; :mod:`explorer.handlers` wires it to the page.
"""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from PIL import Image

from explorer import api
from explorer.draw import colour_scale
from explorer.explanation import Explanation
from explorer.tabs import explain_draw
from explorer.view import QUERY_MODES
from tgrad import viz

MAX_QUERY_VALUE = 64
"""Longer values in a link are refused without being looked at."""
_INDEX = re.compile(r"[0-9]{1,6}")  # ASCII digits only: int() also reads "²" and "٣"
UPLOADED = "upload"
"""The ``photo`` of a link made from an uploaded photo (no bundled photo has this name)."""
UPLOAD_AGAIN = (
    "This view was made from an uploaded photo, which a link cannot carry: upload the "
    "photo again to see it (the link's model, class, view and colour map are set)."
)
"""What the page says when a link made from an uploaded photo is opened."""
LINK_WITHOUT_PHOTO = (
    "This photo was uploaded: the link cannot carry it, so whoever opens the link will "
    "be asked to upload it again."
)
"""What the page says beside the link of a view of an uploaded photo."""


@dataclass(frozen=True)
class LinkedView:
    """What a link asks the Explain tab to show; None: leave that control as it is."""

    photo: str | None = None
    """The bundled photo's name (``"coffee"``)."""
    model: str | None = None
    target: str | None = None
    """The class index, as text for the class box."""
    layer: int | None = None
    mode: str | None = None
    """One of :data:`explorer.view.MODES`."""
    cmap: str | None = None
    uploaded: bool = False
    """The link was made from an uploaded photo (``photo=upload``)."""


def view_query(
    explanation: Explanation, photo: str | None, position: int, mode: str, cmap: str
) -> str:
    """The query string of a link to this view (``"?photo=coffee&model=..."``;
    ``photo`` is None for an uploaded photo: ``photo=upload``)."""
    fields: dict[str, Any] = {"photo": UPLOADED if photo is None else photo}
    fields["model"] = explanation.model
    fields["class"] = explanation.target
    fields["layer"] = position
    fields["mode"] = next(name for name, shown in QUERY_MODES.items() if shown == mode)
    fields["cmap"] = cmap
    return "?" + urlencode(fields)


def parse_query(
    params: Mapping[str, str],
    photos: Sequence[str],
    models: Sequence[str],
    classes: int,
) -> tuple[LinkedView, list[str]]:
    """The view a link asks for, and the names of the parameters that were ignored.

    A parameter is ignored when its value is longer than :data:`MAX_QUERY_VALUE`, not
    one of the choices (``photo`` among ``photos``, ``model`` among ``models``,
    ``mode`` among :data:`QUERY_MODES`, ``cmap`` among the colour maps), or, for
    ``class`` and ``layer``, not a plain non-negative integer (``class`` below
    ``classes``). Unknown parameters are ignored silently (links gain tracking tags).
    """
    values: dict[str, Any] = {}
    ignored: list[str] = []
    choices: dict[str, Sequence[str]] = {
        "photo": [*photos, UPLOADED],
        "model": models,
        "mode": list(QUERY_MODES),
        "cmap": list(viz.CMAPS),
    }
    for name in ("photo", "model", "class", "layer", "mode", "cmap"):
        value = params.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str) or len(value) > MAX_QUERY_VALUE:
            ignored.append(name)
        elif name in choices:
            if value in choices[name]:
                values[name] = value
            else:
                ignored.append(name)
        elif _INDEX.fullmatch(value) and (name != "class" or int(value) < classes):
            values[name] = int(value)
        else:
            ignored.append(name)
    view = LinkedView(
        photo=None if values.get("photo") == UPLOADED else values.get("photo"),
        uploaded=values.get("photo") == UPLOADED,
        model=values.get("model"),
        target=str(values["class"]) if "class" in values else None,
        layer=values.get("layer"),
        mode=QUERY_MODES[values["mode"]] if "mode" in values else None,
        cmap=values.get("cmap"),
    )
    return view, ignored


def _png(pixels: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def figures_zip(
    explanation: Explanation, position: int, mode: str, alpha: float, cmap: str
) -> bytes:
    """The view's figures in one zip, as the page shows them: ``overlay.png`` (T-Grad
    over the photo), ``layer.png`` (the slider's view), ``layers.png`` (every layer's
    map, the paper's Fig. 2, titled with the layers' readable names, with the colour
    bar), ``chart.png`` (the terms of the logit by their readable names, the current
    position highlighted, with a legend), ``colorbar.png`` and ``numbers.json`` (the
    ``/explain`` numbers, with each term's readable name, and the view)."""
    term_index = explanation.term_indices[position]
    numbers = api.decomposition(explanation)
    for index, row in enumerate(numbers["terms"]):
        row["title"] = explanation.title(index)
    numbers["view"] = {
        "position": position,
        "term": explanation.result.terms[term_index].name,
        "mode": mode,
        "opacity": alpha,
        "colour_map": cmap,
        "colour_scale": colour_scale(cmap).replace("**", ""),
    }
    chart = viz.decomposition_chart(
        explanation.result,
        highlight=explanation.result.terms[term_index].name,
        names=[explanation.title(i) for i in range(len(explanation.result.terms))],
    )
    chart_png = io.BytesIO()
    chart.savefig(chart_png, format="png", dpi=150)
    files = {
        "overlay.png": _png(explain_draw.saliency_overlay(explanation, alpha, cmap)),
        "layer.png": _png(explain_draw.layer_overlay(explanation, position, mode, alpha, cmap)),
        "layers.png": _png(explain_draw.layer_figure(explanation, cmap)),
        "chart.png": chart_png.getvalue(),
        "colorbar.png": _png(viz.colorbar_pixels(cmap)),
        "numbers.json": json.dumps(numbers, indent=2).encode(),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


FIGURES_MAX_AGE_S = 3600
"""Zips older than this are removed from the figures folder at the next download."""


def save_figures(folder: Path, name: str, data: bytes) -> Path:
    """Write a zip into ``folder`` (made if needed) under a fresh name, after removing
    the zips older than :data:`FIGURES_MAX_AGE_S`; Gradio serves its own copy."""
    folder.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - FIGURES_MAX_AGE_S
    for old in folder.glob("*.zip"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:  # removed by another request meanwhile
            pass
    path = folder / f"{name}-{time.time_ns()}.zip"
    path.write_bytes(data)
    return path
