"""Pieces the method tabs (Compare, Evaluate, Sanity check) lay out the same way."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import gradio as gr

from explorer import render

FAMILY_NAMES = {"bias": "bias terms", "cam": "CAM", "gradient": "gradient"}


def method_choices() -> list[tuple[str, str]]:
    """``(label, name)`` for every method, grouped by family (T-Grad, CAMs, gradients)."""
    from tgrad.methods import METHODS

    order = list(FAMILY_NAMES)
    ranked = sorted(METHODS.items(), key=lambda item: order.index(item[1].family))  # stable
    return [(f"{FAMILY_NAMES[m.family]} · {render.method_label(name)}", name) for name, m in ranked]


def method_picker(value: Sequence[str], elem_id: str) -> gr.CheckboxGroup:
    """The methods to run, grouped by family, ``value`` ticked."""
    return gr.CheckboxGroup(
        method_choices(),
        value=list(value),
        label="Methods",
        info="Grouped by family: bias terms (T-Grad), CAM, gradient.",
        elem_id=elem_id,
    )


def run_and_stop(label: str, prefix: str) -> tuple[gr.Button, gr.Button]:
    """A primary button (``#<prefix>-btn``) and a Stop button (``#<prefix>-stop``)."""
    with gr.Row():
        run = gr.Button(label, variant="primary", elem_id=f"{prefix}-btn")
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop")
    return run, stop


def wire_stop(stop: gr.Button, handler: Callable, running: gr.events.Dependency) -> None:
    """Stop: raise the page's flag (the running method gives up at its next progress
    report) and cancel the event (a generator between two yields ends there)."""
    stop.click(handler, None, None, cancels=[running], queue=False, api_visibility="private")
