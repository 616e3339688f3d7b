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

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from explorer import api
from explorer.draw import COMPARE_ALPHA, COMPARE_COLUMNS, NORMALISATION, STOPPED
from explorer.errors import METHODS_MEMORY, page_errors
from explorer.events import Events, Photo
from explorer.explanation import Explanation, MethodMap, method_label
from explorer.jobs import Stopped
from explorer.view import choice
from explorer.widgets import method_picker, picture, run_and_stop, wire_run
from tgrad import viz

if TYPE_CHECKING:
    from explorer.handlers import Handlers
    from explorer.tabs.explain import ExplainTab

log = logging.getLogger(__name__)


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
                grid = picture(
                    "Each method's map over the photo",
                    "A grid of saliency maps, one per method",
                    "compare-grid",
                    show_label=False,
                    buttons=["download", "fullscreen"],
                )
                gr.Markdown(NORMALISATION, elem_id="compare-normalisation")
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


# ------------------------------------------------------------------------ its drawing

PENDING_GREY = viz.PENDING_GREY
"""The grey of a panel still to come."""


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _panel_title(found: MethodMap) -> str:
    shared = "shared " if found.shared_with > 1 else ""
    return f"{method_label(found.method)} · {shared}{_duration(found.seconds)}"


def compare_grid(
    explanation: Explanation,
    methods: Sequence[str],
    done: Mapping[str, MethodMap],
    stopped: Sequence[str] = (),
    cmap: str = viz.DEFAULT_CMAP,
) -> np.ndarray:
    """The photo, then one overlay per method in ``cmap`` (a grey panel for one still to
    come, or "stopped"), the colour bar under them: uint8 [H,W,3]. Every map gets
    :data:`NORMALISATION`."""
    pixels = explanation.pixels
    blank = np.full_like(pixels, PENDING_GREY)
    panels = [(pixels, f"Photo · class {explanation.target_label}")]
    for method in methods:
        found = done.get(method)
        if found is None:
            state = STOPPED if method in stopped else "computing…"
            panels.append((blank, f"{method_label(method)} · {state}"))
            continue
        heat = viz.colorize_unit(viz.robust_normalize(found.map), cmap)
        panels.append((viz.blend(pixels, heat, COMPARE_ALPHA), _panel_title(found)))
    return viz.with_colorbar(viz.panel_grid(panels, columns=COMPARE_COLUMNS), cmap)


# ------------------------------------------------------------------------ its events


class CompareEvents(Events):
    """The Compare tab's callback (``/compare``)."""

    @page_errors(METHODS_MEMORY)
    def compare(
        self,
        image: Photo,
        model: str | None,
        target: str | None,
        methods: Sequence[str] | None,
        cmap: str | None = None,
        run_id: str | None = None,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects it)
    ) -> Iterator[tuple[Any, ...]]:
        """Compare methods on a photo: yields (grid picture, timings) as maps arrive, the
        grid in colour map ``cmap`` (default viridis) with its colour bar.

        The single-pass methods come first, together; each other one follows alone, the
        quick ones first. The Stop button (:meth:`stop_compare`) ends the running method
        at its next chunk: the grid keeps what was done and marks the rest "stopped".
        ``run_id`` is the run made when the button was pressed (:meth:`press_compare`);
        an API call has none and gets its own.
        """
        run = self._begin("compare", request, run_id)
        try:
            chosen = self.method_list(methods)
            cmap = choice(cmap, list(viz.CMAPS), "The colour map", viz.DEFAULT_CMAP)
            explanation = self.compute(image, model, target, progress)
            done: dict[str, MethodMap] = {}
            try:
                for done in self.session.method_maps(explanation, chosen, progress, run):
                    if run.replaced:
                        return
                    yield (
                        compare_grid(explanation, chosen, done, cmap=cmap),
                        api.compare_timings(explanation, chosen, done),
                    )
            except GeneratorExit:  # Gradio closed the event between two methods
                log.info("comparison closed by the page between methods")
                raise
            except Stopped:
                stopped = [m for m in chosen if m not in done]
                log.info("comparison %s; not computed: %s", run.reason, ", ".join(stopped))
                if run.replaced:
                    return
                yield (
                    compare_grid(explanation, chosen, done, stopped, cmap),
                    api.compare_timings(explanation, chosen, done, stopped),
                )
        finally:
            self.runs.finish(run)
