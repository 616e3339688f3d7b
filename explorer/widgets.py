"""Pieces the method tabs (Compare, Evaluate, Sanity check) lay out the same way."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import gradio as gr
import numpy as np
from gradio import processing_utils
from PIL import Image

from explorer.draw import CONTROL_CELLS, is_control_label
from explorer.explanation import method_label

PNG_LEVEL = 1
"""zlib level of the pictures the Explain tab sends on every slider step (Gradio writes
level 6): the fastest to encode, for somewhat more bytes (``benchmarks/bench_explorer.py``;
the README has the numbers). PNG either way: lossless, the page shows the exact pixels."""


def png_to_cache(pixels: np.ndarray, cache_dir: str) -> str:
    """Write a uint8 [H,W,3] picture as a PNG (:data:`PNG_LEVEL`) into Gradio's cache."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return processing_utils.save_bytes_to_cache(buffer.getvalue(), "image.png", cache_dir)


def _as_files(value: Any, cache_dir: str) -> Any:
    if isinstance(value, np.ndarray):
        return png_to_cache(value, cache_dir)
    if isinstance(value, list):  # a gallery: (picture, caption) pairs
        return [
            (png_to_cache(item[0], cache_dir), item[1])
            if isinstance(item, tuple) and isinstance(item[0], np.ndarray)
            else item
            for item in value
        ]
    return value


def picture(label: str, alt_text: str, elem_id: str, **options: Any) -> gr.Image:
    """An output picture: a lossless PNG drawn from a uint8 array, not editable, with
    fullscreen and download buttons; ``options`` adds to or overrides Gradio's."""
    settings: dict[str, Any] = {
        "format": "png",
        "type": "numpy",
        "interactive": False,
        "buttons": ["fullscreen", "download"],
    }
    return gr.Image(label=label, alt_text=alt_text, elem_id=elem_id, **{**settings, **options})


C = TypeVar("C", gr.Image, gr.Gallery)


def fast_png(component: C) -> C:
    """Make an image or gallery output write its numpy pictures at :data:`PNG_LEVEL`.
    Its own ``postprocess`` is wrapped on the
    instance: a subclass would do, but Gradio writes a ``.pyi`` stub beside the module
    of every component subclass it sees."""
    postprocess = component.postprocess
    component.postprocess = lambda value: postprocess(_as_files(value, component.GRADIO_CACHE))  # type: ignore[method-assign]
    return component


def _styled_rows(rows: Any, headers: Sequence[str]) -> Any:
    """A table's rows as a pandas ``Styler`` whose controls' rows are greyed
    (:data:`explorer.draw.CONTROL_CELLS`) and whose empty cells are blank; anything
    but a list of rows is left as it is."""
    if not isinstance(rows, list) or not rows:
        return rows
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(headers)[: len(rows[0])], dtype=object)

    def row_style(row: pd.Series) -> list[str]:
        style = CONTROL_CELLS if is_control_label(row.iloc[0]) else ""
        return [style] * len(row)

    return frame.style.apply(row_style, axis=1).format(lambda v: "" if v is None else str(v))


def grey_control_rows(table: gr.Dataframe) -> gr.Dataframe:
    """Make a table output grey the rows of the controls (the handlers still return
    plain rows; the API's ``data`` is the same, its ``metadata`` carries the styles).
    Wrapped on the instance, as :func:`fast_png` does."""
    postprocess = table.postprocess
    headers = list(table.headers or [])
    table.postprocess = lambda value: postprocess(_styled_rows(value, headers))  # type: ignore[method-assign]
    return table


FAMILY_NAMES = {"bias": "bias terms", "cam": "CAM", "gradient": "gradient", "control": "control"}


def method_choices() -> list[tuple[str, str]]:
    """``(label, name)`` for every method, grouped by family (T-Grad, CAMs, gradients,
    the controls last), each label led by its family: ``"control · Random"``."""
    from tgrad.methods import METHODS

    order = list(FAMILY_NAMES)
    ranked = sorted(METHODS.items(), key=lambda item: order.index(item[1].family))  # stable
    return [
        (f"{FAMILY_NAMES[m.family]} · {method_label(name).removesuffix(' (control)')}", name)
        for name, m in ranked
    ]


def method_picker(value: Sequence[str], elem_id: str) -> gr.CheckboxGroup:
    """The methods to run, grouped by family, ``value`` ticked."""
    return gr.CheckboxGroup(
        method_choices(),
        value=list(value),
        label="Methods",
        info="Grouped by family: bias terms (T-Grad), CAM, gradient, and the controls, "
        "which know nothing of the model (a random map, an edge detector).",
        elem_id=elem_id,
    )


@dataclass(frozen=True)
class RunControls:
    """A run button, its Stop button, and the ``gr.State`` that carries a run's id from
    the press to the work (made inside the tab: a State beside the tabs becomes a tab)."""

    run: gr.Button
    stop: gr.Button
    run_id: gr.State
    progress: gr.Markdown
    """Where the run's progress bar is drawn (what it does, the step, the time left)."""


def run_and_stop(label: str, prefix: str) -> RunControls:
    """A primary button (``#<prefix>-btn``), a Stop button (``#<prefix>-stop``) and the
    place of the run's progress bar under them (``#<prefix>-progress``)."""
    with gr.Row():
        run = gr.Button(label, variant="primary", elem_id=f"{prefix}-btn")
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop")
    progress = gr.Markdown("", elem_id=f"{prefix}-progress")
    return RunControls(run, stop, gr.State(""), progress)


def wire_run(
    controls: RunControls,
    press: Callable,
    work: Callable,
    stop: Callable,
    inputs: Sequence[gr.components.Component],
    outputs: Sequence[gr.components.Component],
    **options: Any,
) -> gr.events.Dependency:
    """Wire a run button and its Stop button (:func:`run_and_stop`).

    The run button first calls ``press`` (at once: nothing else is in its queue): it makes
    the run's Stop token, stopping and replacing a run of the same page still going (and
    saying so),
    and puts its id in the State; then ``work`` runs in the queue with ``inputs`` and
    that id as its last input (``options``: its ``api_name``, concurrency, ...; a second
    press waits for the first run, which stops, and then runs). Its progress bar is drawn
    under the buttons: over outputs that already show part of the result, Gradio draws
    only a border. The Stop button calls
    ``stop``, which stops the page's runs: each gives up at its next chunk and shows
    what it did, the rest marked stopped. No Gradio ``cancels``: a cancelled event
    shows its outputs as an error."""
    quick: dict[str, Any] = {"queue": False, "api_visibility": "private", "show_progress": "hidden"}
    # queued (its own concurrency group, instant): a message it sends reaches the page
    pressed = controls.run.click(press, None, controls.run_id, **{**quick, "queue": True})
    working = pressed.success(
        work,
        [*inputs, controls.run_id],
        list(outputs),
        trigger_mode="always_last",
        show_progress_on=[controls.progress],  # the outputs stream: a bar over them hid
        **options,
    )
    controls.stop.click(stop, None, None, **quick)
    return working
