"""The Gradio callbacks: thin wrappers around :class:`~explorer.session.Session` and
:mod:`explorer.render`, callable directly in tests.

Two kinds:

* :meth:`Handlers.explain` (the Explain button, ``/explain`` in the API) does the heavy
  work, through the session's cache, and returns the cache key for the page's
  ``gr.State``.
* Everything else re-renders a cached explanation. The key comes from ``gr.State``; when
  it is empty or no longer cached (cached examples and API clients don't restore State,
  the LRU may have evicted it) the explanation is recomputed from the photo input (see
  :meth:`Handlers._cached`), and when there is no photo either, nothing changes. These
  events take only the key, the three view controls and the photo as inputs: each
  input costs the browser time before it sends the event (a 1001-choice dropdown as an
  input once cost tens of milliseconds per slider step).

Errors a user can cause become ``gr.Error`` with a readable message, never a traceback.
"""

from __future__ import annotations

import logging
import math
import tempfile
import urllib.error
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr

from explorer import canvas, render, share
from explorer.guard import refusal as _user_error  # a user error: the app's own message
from explorer.jobs import Run, Runs, Stopped
from explorer.session import (
    SESSION,
    Explanation,
    MethodMap,
    MethodScore,
    SanityRun,
    Session,
    available_models,
    content_digest,
    download_report,
    parse_key,
    parse_target,
    sanity_key,
)
from explorer.uploads import PhotoGate, PhotoRejected, default_gate
from tgrad import viz
from tgrad.decompose import NotDecomposableError
from tgrad.images import ImageLoadError
from tgrad.models import DEFAULT_MODEL, WeightsUnavailableError, imagenet_categories

log = logging.getLogger(__name__)

NO_PHOTO = "Please upload a photo (or pick one of the bundled photos) first."
ROOT = Path(__file__).resolve().parent.parent
BUNDLED_PHOTOS = tuple(sorted((ROOT / "assets").glob("*.jpg")))
"""The example photos: the only files outside Gradio's upload folder the app reads."""
BUNDLED_BY_NAME = {path.stem: path for path in BUNDLED_PHOTOS}
"""The bundled photos by the name a link gives them (``coffee``)."""
BUNDLED_DIGESTS = {content_digest(path.read_bytes()): path.stem for path in BUNDLED_PHOTOS}
"""The bundled photos' names by content, to name the photo of a view in its link."""
CATEGORIES = tuple(imagenet_categories())
"""The classes of every model of the zoo (ImageNet-1k), to check a class text without
loading (or downloading) a model."""
FIGURES_DIR = Path(tempfile.gettempdir()) / "tgrad-figures"
"""Where "Download figures" writes its zips (Gradio serves a copy of each)."""
MAX_UPLOAD_MB = 25
"""The largest photo file accepted, in MB (``launch(max_file_size=...)`` says the same)."""
MAX_NUMBER_TEXT = 32
MAX_RUNNING_JOBS = 1024
"""Stop tokens kept at most (one per run, removed when the run ends)."""
REPLACED = {
    "compare": "Compare was pressed again: the comparison that was running stops, and "
    "this one replaces it.",
    "evaluate": "Evaluate was pressed again: the evaluation that was running stops, and "
    "this one replaces it.",
    "sanity": "Run was pressed again: the sanity check that was running stops, and this "
    "one replaces it.",
}
"""What the page says when a run button is pressed while its previous run goes on."""
DEFAULT_MEASURE = "spearman_abs"
DEFAULT_STEPS = 56
"""Insertion/deletion steps of the Evaluate tab's quick look (the paper uses 224)."""
MAX_STEPS = 224


def _page(request: gr.Request | None) -> str:
    """The page (Gradio session) a request comes from ("" for a direct call)."""
    return str(getattr(request, "session_hash", None) or "")


def _unavailable(model: str, error: WeightsUnavailableError) -> gr.Error:
    """A model's weights cannot be had: the whole story (file, path) goes to the server's
    log, for whoever runs it; the page says so without a path."""
    log.warning("model %s unavailable: %s", model, error)
    if isinstance(error.__cause__, (urllib.error.URLError, ConnectionError, TimeoutError)):
        return _user_error(
            f"The weights of {model} could not be downloaded: this server cannot reach "
            "the network. Pick a model that is on this machine (starting the server with "
            "TGRAD_OFFLINE=1 lists only those).",
            "No network",
        )
    return _user_error(
        f"The weights of {model} are not on this server and cannot be downloaded now. "
        "The server's log says which file to put where.",
        "Model not available",
    )


class Shown(NamedTuple):
    """What a view event draws: the explanation (None: nothing to show), the slider
    position clamped to it, and the view controls, checked."""

    explanation: Explanation | None
    index: int
    mode: str
    opacity: float
    cmap: str


Photo = str | dict | None
"""A photo input: Gradio's file payload (``{"path": ..., ...}``) as the events deliver
it with ``preprocess=False``, or a path. Checked by a :class:`PhotoGate` before use."""


def number(value: object, name: str, low: float, high: float, default: float) -> float:
    """A number from the page or a raw API payload, clipped to [low, high].

    None gives ``default``; finite ints, floats and short numeric strings are accepted;
    anything else (text, a bool, NaN, infinity, a huge digit string) is a user error naming
    ``name`` and its range.
    """
    if value is None:
        return default
    result = math.nan
    if not isinstance(value, bool) and isinstance(value, (int, float, str)):
        if not isinstance(value, str) or len(value) <= MAX_NUMBER_TEXT:
            try:
                result = float(value)
            except (ValueError, OverflowError):
                pass
    if not math.isfinite(result):
        raise _user_error(f"{name} must be a number from {low:g} to {high:g}.", "Invalid value")
    return min(max(result, low), high)


def choice(value: object, choices: Sequence[str], name: str, default: str) -> str:
    """One of ``choices`` (None or "" gives ``default``); else a user error that lists them
    without echoing what was sent."""
    if value is None or value == "":
        return default
    if isinstance(value, str) and value in choices:
        return value
    raise _user_error(f"{name} must be one of: {', '.join(choices)}.", "Invalid choice")


class Handlers:
    """The callbacks of one app, bound to a session and the models it may load."""

    def __init__(
        self,
        session: Session | None = None,
        models: Sequence[str] | None = None,
        gate: PhotoGate | None = None,
    ) -> None:
        self.session = session or SESSION
        self.models = tuple(models) if models is not None else tuple(available_models())
        self.gate = gate or default_gate(BUNDLED_PHOTOS, MAX_UPLOAD_MB * 1024 * 1024)
        self.runs = Runs(MAX_RUNNING_JOBS)
        """The Stop token of every running comparison, evaluation and cascade."""

    def read_photo(self, image: Photo) -> bytes | None:
        """The bytes of the photo input, through the gate (None: no photo)."""
        try:
            return self.gate.read(image)
        except PhotoRejected as error:
            raise _user_error(str(error), "Cannot use this file") from error

    # ---------------------------------------------------------------- heavy: explain

    def compute(
        self, image: Photo, model: str | None, target: str | None, progress: Any = None
    ) -> Explanation:
        """The explanation for these inputs (cached), or gr.Error with a readable message."""
        model = choice(model, self.models, "The model", DEFAULT_MODEL)
        data = self.read_photo(image)
        if data is None:
            raise _user_error(NO_PHOTO, "No photo")
        return self._explain(data, model, target, progress)

    def _explain(self, data: bytes, model: str, target: Any, progress: Any = None) -> Explanation:
        def report(fraction: float, what: str) -> None:
            if progress is not None:
                progress(fraction, desc=what)

        try:
            return self.session.explain(data, model, target, report)
        except ImageLoadError as error:
            raise _user_error(str(error), "Cannot use this file") from error
        except WeightsUnavailableError as error:
            raise _unavailable(model, error) from error
        except NotDecomposableError as error:
            raise _user_error(str(error), "Model cannot be explained") from error
        except ValueError as error:  # unknown class (messages written for users)
            raise _user_error(str(error), "Invalid choice") from error
        except MemoryError as error:
            raise _user_error("Not enough memory to explain this photo.", "Too large") from error
        except Exception as error:  # anything else: log it, show a short message
            log.exception("explaining a photo with %s failed", model)
            raise gr.Error(
                "Explaining failed unexpectedly. Please try another photo.", title="Error"
            ) from error

    def explain(
        self,
        image: Photo,
        model: str | None = DEFAULT_MODEL,
        target: str | None = None,
        opacity: float = 0.5,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects it)
    ) -> tuple[Any, dict[str, float], dict[str, Any], str]:
        """Explain a photo: (saliency overlay PNG, top-5, decomposition, cache key)."""
        alpha = number(opacity, "The opacity", 0.0, 1.0, 0.5)
        explanation = self.compute(image, model, target, progress)
        return (
            render.saliency_overlay(explanation, alpha),
            render.top5_label(explanation),
            render.decomposition(explanation),
            explanation.key,
        )

    def prepare_model(
        self,
        model: str | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio injects it)
    ) -> str:
        """A model was picked: load it now, downloading its weights first (once, with a
        progress bar) where it is offered for download; then say what it is."""
        model = choice(model, self.models, "The model", DEFAULT_MODEL)

        def report(fraction: float, what: str) -> None:
            progress(fraction, desc=what)

        try:
            loaded = self.session.models.get(model, download_report(report, model)).loaded
        except WeightsUnavailableError as error:
            raise _unavailable(model, error) from error
        return render.model_note(loaded)

    def check_target(self, model: str | None, target: str | None) -> None:
        """Refuse a class text that names no class exactly, before anything is explained
        (an error in the explain event itself would blank the pictures on the page)."""
        model = choice(model, self.models, "The model", DEFAULT_MODEL)
        try:
            parse_target(target, CATEGORIES)  # every model of the zoo: ImageNet-1k
        except ValueError as error:
            raise _user_error(str(error), "Invalid choice") from error

    def explain_if_photo(
        self,
        image: Photo,
        model: str | None,
        target: str | None,
        opacity: float = 0.5,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        """Model or target changed: re-explain if there is a photo, else change nothing."""
        if not image:
            return (gr.skip(),) * 4
        return self.explain(image, model, target, opacity, progress)

    # ---------------------------------------------------------------- cheap: re-render

    def _cached(self, key: str | None, image: Photo) -> Explanation | None:
        """The explanation the page shows: from the cache, else recomputed from the photo.

        Recomputing needs the photo: with a key (evicted from the cache) only if the
        photo is still the one explained, with its model and target; without a key
        (cached examples, API clients) with the default model and the top-1 class. The
        photo goes through the same gate as for Explain, and the computation waits for
        the same process-wide slots.
        """
        explanation = self.session.lookup(key if isinstance(key, str) else None)
        if explanation is not None:
            return explanation
        data = self.read_photo(image)
        if data is None:
            return None
        model, target = DEFAULT_MODEL, None
        parsed = parse_key(key if isinstance(key, str) else None)
        if parsed is not None:
            digest, model, target = parsed
            if content_digest(data) != digest or model not in self.models:
                return None  # a new photo, not explained yet: keep what is shown
        return self._explain(data, model, target)

    def _view(
        self, position: object, mode: object, opacity: object, cmap: object = None
    ) -> tuple[float, str, float, str]:
        """The view controls, checked: (position, mode, opacity, colour map)."""
        return (
            number(position, "The layer position", 0.0, 1e6, 0.0),
            choice(mode, render.MODES, "The view", render.ALONE),
            number(opacity, "The opacity", 0.0, 1.0, 0.5),
            choice(cmap, list(viz.CMAPS), "The colour map", viz.DEFAULT_CMAP),
        )

    def _shown(
        self,
        key: object,
        image: Photo,
        position: object,
        mode: object,
        opacity: object,
        cmap: object,
    ) -> Shown:
        """The view controls checked, and the explanation they show (None: nothing to
        show), at the slider position clamped to it."""
        position, mode, opacity, cmap = self._view(position, mode, opacity, cmap)
        explanation = self._cached(key if isinstance(key, str) else None, image)
        index = 0 if explanation is None else explanation.clamp(position)
        return Shown(explanation, index, mode, opacity, cmap)

    def show_layers(
        self,
        key: str | None,
        position: float,
        mode: str,
        opacity: float,
        image: Photo = None,
        cmap: str | None = None,
    ) -> tuple[Any, ...]:
        """After an explanation: size the layer slider, draw the layer view and the
        summary, and title the overlay with the class it explains (redrawing it when the
        page's colour map is not the one ``/explain`` draws with)."""
        explanation, index, mode, opacity, cmap = self._shown(
            key, image, position, mode, opacity, cmap
        )
        if explanation is None:
            return (gr.skip(),) * 6
        slider = gr.update(maximum=explanation.positions - 1, value=index, interactive=True)
        overlay: dict[str, Any] = {"label": render.overlay_title(explanation)}
        if cmap != viz.DEFAULT_CMAP:
            overlay["value"] = render.saliency_overlay(explanation, opacity, cmap)
        return (
            slider,
            render.layer_overlay(explanation, index, mode, opacity, cmap),
            render.layer_caption(explanation, index, mode),
            render.chart_html(explanation, index, mode),
            render.summary(explanation),
            gr.update(**overlay),
        )

    def show_grid(self, key: str | None, image: Photo = None, cmap: str | None = None) -> Any:
        """After the layer view: the grid of every layer's map (the paper's Fig. 2)."""
        explanation, _, _, _, cmap = self._shown(key, image, None, None, None, cmap)
        return gr.skip() if explanation is None else render.layer_gallery(explanation, cmap)

    def canvas_data(self, key: str | None, image: Photo = None) -> Any:
        """After an explanation: what the page draws every view from, in the browser
        (:func:`explorer.canvas.payload_json`); gr.skip() when there is nothing shown."""
        explanation = self._shown(key, image, None, None, None, None).explanation
        return gr.skip() if explanation is None else canvas.payload_json(explanation)

    def render_layer(
        self,
        key: str | None,
        position: float,
        mode: str,
        opacity: float,
        image: Photo = None,
        cmap: str | None = None,
    ) -> tuple[Any, ...]:
        """Layer slider or mode moved: (layer overlay, caption, chart)."""
        explanation, index, mode, opacity, cmap = self._shown(
            key, image, position, mode, opacity, cmap
        )
        if explanation is None:
            return (gr.skip(),) * 3
        return (
            render.layer_overlay(explanation, index, mode, opacity, cmap),
            render.layer_caption(explanation, index, mode),
            render.chart_html(explanation, index, mode),
        )

    def render_opacity(
        self,
        key: str | None,
        position: float,
        mode: str,
        opacity: float,
        image: Photo = None,
        cmap: str | None = None,
    ) -> tuple[Any, ...]:
        """Opacity moved: (saliency overlay, layer overlay)."""
        explanation, index, mode, opacity, cmap = self._shown(
            key, image, position, mode, opacity, cmap
        )
        if explanation is None:
            return (gr.skip(),) * 2
        return (
            render.saliency_overlay(explanation, opacity, cmap),
            render.layer_overlay(explanation, index, mode, opacity, cmap),
        )

    def render_colours(
        self,
        key: str | None,
        position: float,
        mode: str,
        opacity: float,
        image: Photo = None,
        cmap: str | None = None,
    ) -> tuple[Any, ...]:
        """Colour map changed: (colour bar, its caption, saliency overlay, layer overlay,
        layer grid); the last three only when there is an explanation."""
        explanation, index, mode, opacity, cmap = self._shown(
            key, image, position, mode, opacity, cmap
        )
        legend = (viz.colorbar_pixels(cmap), render.colour_scale(cmap))
        if explanation is None:
            return (*legend, *(gr.skip(),) * 3)
        return (
            *legend,
            render.saliency_overlay(explanation, opacity, cmap),
            render.layer_overlay(explanation, index, mode, opacity, cmap),
            render.layer_gallery(explanation, cmap),
        )

    def jump(self, key: str | None, selection: gr.SelectData) -> Any:
        """A click on a map of the layer grid, or on a bar of the chart: move the layer
        slider there. The position is checked like any value from the page."""
        index = selection.index
        if isinstance(index, (list, tuple)):  # a gallery in a grid may send [row, column]
            index = index[0] if len(index) == 1 else None
        position = number(index, "The layer position", 0.0, 1e6, 0.0)
        explanation = self.session.lookup(key if isinstance(key, str) else None)
        if explanation is None:
            return gr.skip()
        return explanation.clamp(position)

    # ---------------------------------------------------------------- links, figures

    def view_link(
        self, key: str | None, position: float, mode: str, cmap: str | None = None
    ) -> Any:
        """The query string of a link to the view shown (:func:`explorer.share.view_query`;
        the photo is named only when it is a bundled one)."""
        position, mode, _, cmap = self._view(position, mode, None, cmap)
        explanation = self.session.lookup(key if isinstance(key, str) else None)
        if explanation is None:
            return gr.skip()
        parsed = parse_key(explanation.key)
        photo = BUNDLED_DIGESTS.get(parsed[0]) if parsed else None
        return share.view_query(explanation, photo, explanation.clamp(position), mode, cmap)

    def link_note(self, key: str | None) -> str:
        """What the page says beside the link: that an uploaded photo is not in it."""
        explanation = self.session.lookup(key if isinstance(key, str) else None)
        parsed = parse_key(explanation.key) if explanation is not None else None
        if parsed is None or parsed[0] in BUNDLED_DIGESTS:
            return ""
        return share.LINK_WITHOUT_PHOTO

    def open_link(self, request: gr.Request | None = None) -> tuple[Any, ...]:
        """Page load: apply the view the page's link asks for: (photo, model, class,
        requested layer, mode, colour map), gr.skip() for what it does not set. What
        cannot be used is named in a warning and ignored."""
        params = dict(getattr(request, "query_params", None) or {})
        view, ignored = share.parse_query(
            params, list(BUNDLED_BY_NAME), self.models, len(CATEGORIES)
        )
        if ignored:
            verb = "was" if len(ignored) == 1 else "were"
            gr.Warning(f"This link's {', '.join(ignored)} could not be used and {verb} ignored.")
        if view.uploaded:
            gr.Warning(share.UPLOAD_AGAIN)
        skip = gr.skip()
        return (
            str(BUNDLED_BY_NAME[view.photo]) if view.photo else skip,
            view.model or skip,
            view.target if view.target is not None else skip,
            view.layer if view.layer is not None else skip,
            view.mode or skip,
            view.cmap or skip,
        )

    def figures(
        self,
        key: str | None,
        position: float,
        mode: str,
        opacity: float,
        image: Photo = None,
        cmap: str | None = None,
    ) -> str:
        """Download figures: the view's figures in a zip (:func:`explorer.share.figures_zip`)."""
        explanation, index, mode, opacity, cmap = self._shown(
            key, image, position, mode, opacity, cmap
        )
        if explanation is None:
            raise _user_error(
                "Explain a photo first: the figures are of what is shown.", "Nothing yet"
            )
        data = share.figures_zip(explanation, index, mode, opacity, cmap)
        name = f"t-grad-{explanation.model}-class{explanation.target}-position{index}"
        return str(share.save_figures(FIGURES_DIR, name, data))

    # ---------------------------------------------------------------- runs and Stop

    def press_compare(self, request: gr.Request | None = None) -> str:
        """The Compare button: a new run of this page (:meth:`_press`)."""
        return self._press("compare", request)

    def press_evaluate(self, request: gr.Request | None = None) -> str:
        """The Evaluate button: a new run of this page (:meth:`_press`)."""
        return self._press("evaluate", request)

    def press_sanity(self, request: gr.Request | None = None) -> str:
        """The Sanity tab's Run button: a new run of this page (:meth:`_press`)."""
        return self._press("sanity", request)

    def stop_compare(self, request: gr.Request | None = None) -> None:
        """The Compare tab's Stop button: this page's comparisons stop."""
        self.runs.stop("compare", _page(request))

    def stop_evaluate(self, request: gr.Request | None = None) -> None:
        """The Evaluate tab's Stop button: this page's evaluations stop."""
        self.runs.stop("evaluate", _page(request))

    def stop_sanity(self, request: gr.Request | None = None) -> None:
        """The Sanity tab's Stop button: this page's cascades stop."""
        self.runs.stop("sanity", _page(request))

    def _press(self, kind: str, request: gr.Request | None) -> str:
        """A run button was pressed: the run's id (for the page's ``gr.State``, read by
        the run when its work begins). A run of the same page and kind still going is
        stopped, and the page says that the new one replaces it."""
        run, replaced = self.runs.press(kind, _page(request))
        if replaced:
            log.info("%s pressed again on one page: the running one stops", kind)
            gr.Info(REPLACED[kind])
        return run.id

    def _begin(self, kind: str, request: gr.Request | None, run_id: object) -> Run:
        return self.runs.begin(kind, _page(request), run_id)

    # ---------------------------------------------------------------- Compare tab

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
                        render.compare_grid(explanation, chosen, done, cmap=cmap),
                        render.compare_timings(explanation, chosen, done),
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
                    render.compare_grid(explanation, chosen, done, stopped, cmap),
                    render.compare_timings(explanation, chosen, done, stopped),
                )
            except NotDecomposableError as error:
                raise _user_error(str(error), "Model cannot be explained") from error
            except MemoryError as error:
                raise _user_error("Not enough memory for these methods.", "Too large") from error
        finally:
            self.runs.finish(run)

    # ---------------------------------------------------------------- Sanity tab

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
        each step. The Stop button (:meth:`stop_sanity`) ends it at the next chunk of a
        slow method or the next step: the columns done stay, the rest say "stopped"."""
        from tgrad.sanity import MEASURES

        run = self._begin("sanity", request, run_id)
        try:
            chosen = self.method_list(methods)
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
            except MemoryError as error:
                raise _user_error("Not enough memory for these methods.", "Too large") from error
        finally:
            self.runs.finish(run)

    @staticmethod
    def _sanity_view(
        explanation: Explanation, run: SanityRun, measure: str, key: str, stopped: bool = False
    ) -> tuple[Any, Any, dict[str, Any], str]:
        return (
            render.sanity_grid(explanation, run, stopped),
            render.sanity_curves(run, measure),
            render.sanity_numbers(explanation, run, stopped),
            key,
        )

    def sanity_measure(self, key: str | None, measure: str | None) -> Any:
        """The measure changed: redraw the curves of the last finished cascade."""
        from tgrad.sanity import MEASURES

        measure = choice(measure, MEASURES, "The measure", DEFAULT_MEASURE)
        run = self.session.sanity_runs.get(key) if isinstance(key, str) else None
        return gr.skip() if run is None else render.sanity_curves(run, measure)

    # ---------------------------------------------------------------- Evaluate tab

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
        method's metrics arrive. ``steps`` is the insertion/deletion step count. The
        progress bar names the method, the step and the time left; the Stop button
        (:meth:`stop_evaluate`) ends the run at the next chunk of perturbed images, and
        the table marks the methods not scored "stopped"."""
        run = self._begin("evaluate", request, run_id)
        try:
            chosen = self.method_list(methods)
            n_steps = int(number(steps, "The number of steps", 1, MAX_STEPS, DEFAULT_STEPS))
            explanation = self.compute(image, model, target, progress)
            done: dict[str, MethodScore] = {}
            try:
                for done in self.session.method_scores(explanation, chosen, n_steps, progress, run):
                    if run.replaced:
                        return
                    yield render.evaluation(explanation, chosen, done)
            except Stopped:
                stopped = [m for m in chosen if m not in done]
                log.info("evaluation %s; not scored: %s", run.reason, ", ".join(stopped))
                if run.replaced:
                    return
                yield render.evaluation(explanation, chosen, done, stopped)
            except MemoryError as error:
                raise _user_error("Not enough memory for these methods.", "Too large") from error
        finally:
            self.runs.finish(run)

    @staticmethod
    def method_list(methods: object) -> list[str]:
        """The methods asked for, checked against the registry (order kept, no repeats)."""
        from tgrad.methods import METHODS

        if isinstance(methods, str):
            methods = [methods]
        if not isinstance(methods, (list, tuple)) or not methods:
            raise _user_error("Pick at least one method.", "No method")
        if len(methods) > len(METHODS) or not all(isinstance(m, str) for m in methods):
            raise _user_error("Pick methods from the list.", "Invalid choice")
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise _user_error(f"Unknown method; pick from: {', '.join(METHODS)}.", "Invalid choice")
        return list(dict.fromkeys(methods))

    @staticmethod
    def pick_target(selection: gr.SelectData) -> str:
        """A click on one of the top-5 predictions makes it the target."""
        value = selection.value
        if isinstance(value, dict):  # some Gradio versions send {"label": ...}
            value = value.get("label", "")
        return str(value)[:200].removesuffix(render.EXPLAINED_MARK)
