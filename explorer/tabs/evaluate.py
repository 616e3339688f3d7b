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

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import gradio as gr
from matplotlib.figure import Figure

from explorer.draw import STOPPED, grey_controls
from explorer.errors import METHODS_MEMORY, page_errors
from explorer.events import Events, Photo
from explorer.explanation import Explanation, MethodScore, method_label
from explorer.jobs import Stopped
from explorer.view import number
from explorer.widgets import grey_control_rows, method_picker, run_and_stop, wire_run
from tgrad import viz
from tgrad.methods.controls import controls_last

if TYPE_CHECKING:
    from explorer.handlers import Handlers
    from explorer.tabs.explain import ExplainTab

log = logging.getLogger(__name__)

DEFAULT_STEPS = 56
"""Insertion/deletion steps of the Evaluate tab's quick look (the paper uses 224)."""
MAX_STEPS = 224

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
                    headers=list(SCORE_COLUMNS),
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


# ------------------------------------------------------------------------ its drawing

SCORE_COLUMNS = (
    "method",
    "insertion AUC ↑",
    "deletion AUC ↓",
    "insertion - deletion ↑",
    "Average Drop % ↓",
    "Increase in Confidence % ↑",
    "steps",
    "metrics time (s)",
)
"""The Evaluate table's columns (the ``/evaluate`` API's headers)."""


def score_curves(
    explanation: Explanation, methods: Sequence[str], done: Mapping[str, MethodScore], which: str
) -> Figure | None:
    """The insertion (``which="insertion"``) or deletion curves of the scored methods,
    titled with the class they follow."""
    scored = [m for m in methods if m in done]
    if not scored:
        return None
    first = done[scored[0]]
    how = "put back first" if which == "insertion" else "removed first"
    title = (
        f"{which.capitalize()} for {explanation.target_label} ({first.n_steps} steps):\n"
        f"most salient pixels {how}"
    )
    return grey_controls(
        viz.curves_figure(
            first.fractions,
            {method_label(m): getattr(done[m], which) for m in scored},
            {method_label(m): getattr(done[m], f"{which}_auc") for m in scored},
            title,
            ylabel=f"probability of {explanation.categories[explanation.target]}",
        ),
        legend="best",
    )


def score_table(
    methods: Sequence[str], done: Mapping[str, MethodScore], stopped: Sequence[str] = ()
) -> list[list[Any]]:
    """One row per scored method, in the order of :data:`SCORE_COLUMNS`; a method a
    stopped run did not score has a row that says so."""
    rows = []
    for m in methods:
        if m in done:
            rows.append(
                [
                    method_label(m),
                    round(done[m].insertion_auc, 4),
                    round(done[m].deletion_auc, 4),
                    round(done[m].insertion_minus_deletion, 4),
                    round(done[m].average_drop, 2),
                    round(done[m].increase, 1),
                    done[m].n_steps,
                    round(done[m].seconds, 2),
                ]
            )
        elif m in stopped:
            rows.append([f"{method_label(m)} · {STOPPED}", *[None] * (len(SCORE_COLUMNS) - 1)])
    return rows


def evaluation(
    explanation: Explanation,
    methods: Sequence[str],
    done: Mapping[str, MethodScore],
    stopped: Sequence[str] = (),
) -> tuple[Figure | None, Figure | None, list[list[Any]]]:
    """What the Evaluate tab shows: (insertion plot, deletion plot, table)."""
    return (
        score_curves(explanation, methods, done, "insertion"),
        score_curves(explanation, methods, done, "deletion"),
        score_table(methods, done, stopped),
    )


# ------------------------------------------------------------------------ its events


class EvaluateEvents(Events):
    """The Evaluate tab's callback (``/evaluate``)."""

    @page_errors(METHODS_MEMORY)
    def evaluate(
        self,
        image: Photo,
        model: str | None,
        target: str | None,
        methods: Sequence[str] | None,
        steps: object = DEFAULT_STEPS,
        run_id: str | None = None,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects it)
    ) -> Iterator[tuple[Any, Any, list[list[Any]]]]:
        """Score methods on a photo: yields (insertion plot, deletion plot, table) as each
        method's metrics arrive, the controls last. ``steps`` is the insertion/deletion
        step count. The
        progress bar names the method, the step and the time left; the Stop button
        (:meth:`stop_evaluate`) ends the run at the next chunk of perturbed images, and
        the table marks the methods not scored "stopped"."""
        run = self._begin("evaluate", request, run_id)
        try:
            chosen = list(controls_last(self.method_list(methods)))
            n_steps = int(number(steps, "The number of steps", 1, MAX_STEPS, DEFAULT_STEPS))
            explanation = self.compute(image, model, target, progress)
            done: dict[str, MethodScore] = {}
            try:
                for done in self.session.method_scores(explanation, chosen, n_steps, progress, run):
                    if run.replaced:
                        return
                    yield evaluation(explanation, chosen, done)
            except Stopped:
                stopped = [m for m in chosen if m not in done]
                log.info("evaluation %s; not scored: %s", run.reason, ", ".join(stopped))
                if run.replaced:
                    return
                yield evaluation(explanation, chosen, done, stopped)
        finally:
            self.runs.finish(run)
