"""The Compare tab: T-Grad beside the paper's ten baselines on the Explain tab's photo.

Same photo, model and class as the Explain tab (its components are this tab's inputs),
and the same caches: T-Grad's map is the explanation already computed there, and every
method's map is kept by the session, so switching tabs or comparing again recomputes
nothing. Compare (``/compare`` in the API) streams a grid: the single-pass methods
arrive together from one shared pass, the slow ones (ScoreCAM, Integrated Gradients,
SmoothGrad) one by one with a progress bar, the quick ones first; Stop ends the running
one and the grid keeps what was done. The grid follows the Explain tab's colour map
and carries its colour bar.
"""

from __future__ import annotations

import gradio as gr

from explorer import render
from explorer.explain_tab import ExplainTab
from explorer.handlers import Handlers
from explorer.widgets import method_picker, run_and_stop, wire_run


def default_methods() -> list[str]:
    """The methods ticked at first: every single-pass one (they cost one pass together),
    the chance controls left for the user to add."""
    from tgrad.methods import METHODS
    from tgrad.methods.controls import is_control

    return [n for n, method in METHODS.items() if method.single_pass and not is_control(n)]


def build(handlers: Handlers, explain: ExplainTab) -> None:
    """Lay out the Compare tab inside the current ``gr.Tabs`` and wire its events."""
    with gr.Tab("Compare", id="compare-tab", elem_id="compare-tab"):
        gr.Markdown(
            "Put T-Grad beside the CAM and gradient methods on the photo, model and class "
            "chosen in the **Explain** tab. The single-pass methods share one forward and "
            "backward pass and appear together; the slow ones follow one by one.",
            elem_id="compare-intro",
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260):
                methods = method_picker(default_methods(), "compare-methods")
                controls = run_and_stop("Compare", "compare")
            with gr.Column(scale=3, min_width=400):
                grid = gr.Image(
                    label="Each method's map over the photo",
                    show_label=False,
                    format="png",
                    type="numpy",
                    interactive=False,
                    buttons=["download", "fullscreen"],
                    alt_text="A grid of saliency maps, one per method",
                    elem_id="compare-grid",
                )
                gr.Markdown(render.NORMALISATION, elem_id="compare-normalisation")
                with gr.Accordion("Timings (as the /compare API returns them)", open=False):
                    timings = gr.JSON(label="Timings", elem_id="compare-timings")

    wire_run(
        controls,
        handlers.press_compare,
        handlers.compare,
        handlers.stop_compare,
        [explain.image, explain.model, explain.target, methods, explain.cmap],
        [grid, timings],
        api_name="compare",
        api_description="Compare methods on a photo: a grid of overlays (PNG) and timings.",
        concurrency_id="compare",
        concurrency_limit=2,
        preprocess=False,
    )
