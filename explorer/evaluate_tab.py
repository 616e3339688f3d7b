"""The Evaluate tab: how faithful each method's map is on the Explain tab's photo.

For the chosen methods: the insertion and the deletion curves (the class's probability
as the most salient pixels are put back into a blurred copy, or removed from the photo),
and a table of Insertion, Deletion, Insertion - Deletion, Average Drop % and % Increase
in Confidence (SPEC 4). A quick look uses fewer steps than the paper's 224; the step count
used is always in the table. Maps are shared with the Compare tab's cache, and each score
is kept by the session too. The progress bar names the method being scored, its step
and the time left; Stop ends the run, and the table keeps what was scored. ``/evaluate``
in the API.
"""

from __future__ import annotations

import gradio as gr

from explorer import render
from explorer.explain_tab import ExplainTab
from explorer.handlers import DEFAULT_STEPS, MAX_STEPS, Handlers
from explorer.widgets import grey_control_rows, method_picker, run_and_stop, wire_run

DEFAULT_METHODS = ["tgrad", "gradcam", "fullgrad", "vanilla", "input_x_gradient", "random"]
"""Ticked at first: T-Grad, a CAM and gradients, and the random control, the floor every
map should beat."""
STEP_CHOICES = [
    ("quick look · 28 steps", 28),
    (f"quick look · {DEFAULT_STEPS} steps", DEFAULT_STEPS),
    ("112 steps", 112),
    (f"the paper's protocol · {MAX_STEPS} steps", MAX_STEPS),
]


def build(handlers: Handlers, explain: ExplainTab) -> None:
    """Lay out the Evaluate tab inside the current ``gr.Tabs`` and wire its events."""
    with gr.Tab("Evaluate", id="evaluate-tab", elem_id="evaluate-tab"):
        gr.Markdown(
            "How much does each map tell about the model? **Insertion** puts the photo's "
            "most salient pixels (by the map) back into a blurred copy, step by step: a "
            "faithful map makes the class's probability rise fast (large area). "
            "**Deletion** removes them from the photo: the probability should fall fast "
            "(small area). **Average Drop** is how much confidence is lost when the photo "
            "is weighted by the map; **Increase in Confidence** says whether it went up. "
            "All for the class chosen in the **Explain** tab. The controls, listed last in "
            "grey, know nothing of the model: a random map (the floor every method should "
            "beat) and an edge detector.",
            elem_id="evaluate-intro",
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260):
                methods = method_picker(DEFAULT_METHODS, "evaluate-methods")
                steps = gr.Radio(
                    STEP_CHOICES,
                    value=DEFAULT_STEPS,
                    label="Insertion / deletion steps",
                    info="Each step is one forward pass per curve: 224 steps cost 448 per map.",
                    elem_id="evaluate-steps",
                )
                controls = run_and_stop("Evaluate", "evaluate")
            with gr.Column(scale=3, min_width=400):
                with gr.Row():
                    insertion = gr.Plot(label="Insertion", format="png", elem_id="insertion")
                    deletion = gr.Plot(label="Deletion", format="png", elem_id="deletion")
                table = gr.Dataframe(
                    headers=list(render.SCORE_COLUMNS),
                    label="Scores (↑ higher is better, ↓ lower is better)",
                    interactive=False,
                    wrap=True,
                    column_widths=["17%", "13%", "11%", "12%", "12%", "13%", "8%", "14%"],
                    elem_id="scores",
                )
                grey_control_rows(table)  # the controls' rows, last, in grey

    wire_run(
        controls,
        handlers.press_evaluate,
        handlers.evaluate,
        handlers.stop_evaluate,
        [explain.image, explain.model, explain.target, methods, steps],
        [insertion, deletion, table],
        api_name="evaluate",
        api_description="Score methods on a photo: insertion and deletion curves, a table.",
        concurrency_id="evaluate",
        concurrency_limit=2,
        preprocess=False,
    )
