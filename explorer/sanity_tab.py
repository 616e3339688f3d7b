"""The Sanity tab: the cascading randomization check (Adebayo et al. 2018; the paper's
Fig. 6), live.

The model of the Explain tab is randomized layer group by layer group, from the output
towards the input, on a private copy (the shared model, and everyone else's
explanations, are untouched). After each step a grid gains a column (one row per method)
and a plot gains a point per method: the similarity of its map to the original model's.
A map that stays the same on a destroyed model explains nothing. ``/sanity`` in the API.
"""

from __future__ import annotations

import gradio as gr

from explorer.explain_tab import ExplainTab
from explorer.handlers import DEFAULT_MEASURE, Handlers
from explorer.widgets import method_picker, run_and_stop, wire_run
from tgrad import viz

DEFAULT_METHODS = ["tgrad", "gradcam", "vanilla", "guided_backprop", "edge"]
"""Ticked at first: T-Grad, a CAM, two gradients, and the edge detector (a control): its
maps and its curve stay the same as the model is destroyed, the picture of a failure."""
MEASURE_CHOICES = [(title, name) for name, title in viz.MEASURE_TITLES.items()]


def build(handlers: Handlers, explain: ExplainTab) -> None:
    """Lay out the Sanity tab inside the current ``gr.Tabs`` and wire its events."""
    with gr.Tab("Sanity check", id="sanity-tab", elem_id="sanity-tab"):
        run_key = gr.State("")  # inside the tab: a State beside the tabs becomes a tab
        gr.Markdown(
            "An explanation should depend on what the model learned. Here the model of the "
            "**Explain** tab is destroyed step by step: its layers get random weights, from "
            "the classifier down to the first convolution. A method that passes the check "
            "shows maps that fall apart (similarity near 0); one that fails keeps drawing "
            "the same picture (an edge detector) whatever the weights. The photo and the "
            "class stay fixed; the model you share with others is never changed. The edge "
            "detector (a control, last row, grey dashed curve) shows what failing looks "
            "like: it never looks at the model, so its maps stay the same at every step and "
            "its similarity stays at 1.",
            elem_id="sanity-intro",
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260):
                methods = method_picker(DEFAULT_METHODS, "sanity-methods")
                measure = gr.Dropdown(
                    MEASURE_CHOICES,
                    value=DEFAULT_MEASURE,
                    label="Similarity measure",
                    elem_id="sanity-measure",
                )
                controls = run_and_stop("Run", "sanity")
            with gr.Column(scale=3, min_width=400):
                curves = gr.Plot(
                    label="Similarity to the original map", format="png", elem_id="sanity-curves"
                )
        grid = gr.Image(
            label="Maps as the model is randomized (rows: methods; columns: steps)",
            format="png",
            type="numpy",
            interactive=False,
            buttons=["download", "fullscreen"],
            alt_text="A grid of maps, one row per method, one column per randomization step",
            elem_id="sanity-grid",
        )
        with gr.Accordion("Every similarity (as the /sanity API returns them)", open=False):
            numbers = gr.JSON(label="Similarities", elem_id="sanity-numbers")

    wire_run(
        controls,
        handlers.press_sanity,
        handlers.sanity,
        handlers.stop_sanity,
        [explain.image, explain.model, explain.target, methods, measure],
        [grid, curves, numbers, run_key],
        api_name="sanity",
        api_description="Cascading randomization: a grid of maps, similarity curves, numbers.",
        concurrency_id="sanity",
        concurrency_limit=2,
        preprocess=False,
    )
    measure.change(
        handlers.sanity_measure,
        [run_key, measure],
        curves,
        api_visibility="private",
        show_progress="hidden",
        preprocess=False,
    )
