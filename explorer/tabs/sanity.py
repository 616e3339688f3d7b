"""The Sanity tab: the cascading randomization check (Adebayo et al. 2018; the paper's
Fig. 6), live.

The model of the Explain tab is randomized layer group by layer group, from the output
towards the input, on a private copy (the shared model, and everyone else's
explanations, are untouched). After each step a grid gains a column (one row per method)
and a plot gains a point per method: the similarity of its map to the original model's.
A map that stays the same on a destroyed model explains nothing. ``/sanity`` in the API.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
from matplotlib.figure import Figure

from explorer import api
from explorer.draw import STOPPED, grey_controls
from explorer.errors import METHODS_MEMORY, page_errors
from explorer.events import Events, Photo
from explorer.explanation import SANITY_MAP_SIZE, Explanation, SanityRun, method_label, sanity_key
from explorer.jobs import Stopped
from explorer.view import choice
from explorer.widgets import method_picker, picture, run_and_stop, wire_run
from tgrad import viz
from tgrad.methods.controls import controls_last

if TYPE_CHECKING:
    from explorer.handlers import Handlers
    from explorer.tabs.explain import ExplainTab

log = logging.getLogger(__name__)

DEFAULT_MEASURE = "spearman_abs"

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
        grid = picture(
            "Maps as the model is randomized (rows: methods; columns: steps)",
            "A grid of maps, one row per method, one column per randomization step",
            "sanity-grid",
            buttons=["download", "fullscreen"],
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


# ------------------------------------------------------------------------ its drawing


def _sanity_titles(run: SanityRun, stopped: bool = False) -> list[str]:
    """The steps of a run: "original", each group randomized so far by its readable
    name, then "…" for the steps to come ("stopped" once the run was stopped)."""
    names = run.names or tuple(step.group for step in run.steps[1:])
    pending = run.groups + 1 - len(run.steps)
    done = ["original", *names[: max(0, len(run.steps) - 1)]]
    return done + [STOPPED if stopped else "…"] * pending


def sanity_grid(explanation: Explanation, run: SanityRun, stopped: bool = False) -> np.ndarray:
    """The paper's Fig. 6 (:func:`tgrad.viz.sanity_grid`) over the photo: one row per
    method, one column per step (in bands of :data:`tgrad.viz.SANITY_COLUMNS`); a grey
    panel for a step still to come, or "stopped"."""
    maps = {method_label(m): [step.maps[m] for step in run.steps] for m in run.methods}
    titles = _sanity_titles(run, stopped)
    return viz.sanity_grid(titles, maps, SANITY_MAP_SIZE, explanation.pixels)


def sanity_curves(run: SanityRun, measure: str) -> Figure:
    """Similarity to the original map against the randomized groups, one line per method
    (:func:`tgrad.viz.sanity_curves` for one measure), titled with the measure's name
    and ticked with the groups' readable names."""
    groups = _sanity_titles(run)
    ticks = [groups[0], *(f"{i}: {g}" for i, g in enumerate(groups[1:], 1))]
    curves = {
        method_label(m): [step.similarity[m][measure] for step in run.steps] for m in run.methods
    }
    return grey_controls(viz.sanity_curves(ticks, {measure: curves}), legend="lower left")


# ------------------------------------------------------------------------ its events


class SanityEvents(Events):
    """The Sanity tab's callbacks (``/sanity``, and the measure picker)."""

    @page_errors(METHODS_MEMORY)
    def sanity(
        self,
        image: Photo,
        model: str | None,
        target: str | None,
        methods: Sequence[str] | None,
        measure: str | None = DEFAULT_MEASURE,
        run_id: str | None = None,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects it)
    ) -> Iterator[tuple[Any, Any, dict[str, Any], str]]:
        """Cascading randomization: yields (grid, similarity plot, numbers, run key) after
        each step, the controls last. The Stop button (:meth:`stop_sanity`) ends it at the
        next chunk of a slow method or the next step: the columns done stay, the rest say
        "stopped"."""
        from tgrad.sanity import MEASURES

        run = self._begin("sanity", request, run_id)
        try:
            chosen = list(controls_last(self.method_list(methods)))
            measure = choice(measure, MEASURES, "The measure", DEFAULT_MEASURE)
            explanation = self.compute(image, model, target, progress)
            key = sanity_key(explanation, chosen)
            shown = None
            try:
                for shown in self.session.sanity(explanation, chosen, progress, run):
                    if run.replaced:
                        return
                    yield self._sanity_view(explanation, shown, measure, key)
            except Stopped:
                log.info("sanity check %s", run.reason)
                if run.replaced:
                    return
                partial = shown or SanityRun(tuple(chosen))
                yield self._sanity_view(explanation, partial, measure, key, stopped=True)
            except GeneratorExit:  # Gradio closed the event between two steps
                log.info("sanity check closed by the page between steps")
                raise
        finally:
            self.runs.finish(run)

    @staticmethod
    def _sanity_view(
        explanation: Explanation, run: SanityRun, measure: str, key: str, stopped: bool = False
    ) -> tuple[Any, Any, dict[str, Any], str]:
        return (
            sanity_grid(explanation, run, stopped),
            sanity_curves(run, measure),
            api.sanity_numbers(explanation, run, stopped),
            key,
        )

    def sanity_measure(self, key: str | None, measure: str | None) -> Any:
        """The measure changed: redraw the curves of the last finished cascade."""
        from tgrad.sanity import MEASURES

        measure = choice(measure, MEASURES, "The measure", DEFAULT_MEASURE)
        run = self.session.sanity_runs.get(key) if isinstance(key, str) else None
        return gr.skip() if run is None else sanity_curves(run, measure)
