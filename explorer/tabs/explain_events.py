"""The Explain tab's callbacks: the explanation itself (``/explain``), the model picker,
the class, and every view event that redraws a cached explanation (layer slider, mode,
opacity, colour map, a click on the grid or the chart), the link to the view and the
figures. Each view event takes the cache key, the :class:`~explorer.view.View` controls
and the photo, nothing more: each input costs the browser time before it sends the event
(the README's design section says how much a large dropdown as an input costs)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from explorer import api, canvas, share
from explorer.cache import download_report
from explorer.chart import chart_html
from explorer.draw import colour_scale
from explorer.errors import page_errors
from explorer.events import (
    BUNDLED_BY_NAME,
    BUNDLED_DIGESTS,
    CATEGORIES,
    Events,
    Photo,
    Shown,
    view_event,
)
from explorer.explanation import parse_key, parse_target
from explorer.guard import refusal
from explorer.tabs import explain_draw as draw
from explorer.view import View, choice, number
from tgrad import viz
from tgrad.models import DEFAULT_MODEL

FIGURES_DIR = Path(tempfile.gettempdir()) / "tgrad-figures"
"""Where "Download figures" writes its zips (Gradio serves a copy of each)."""


class ExplainEvents(Events):
    """The Explain tab's callbacks."""

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
            draw.saliency_overlay(explanation, alpha),
            draw.top5_label(explanation),
            api.decomposition(explanation),
            explanation.key,
        )

    @page_errors("Not enough memory to load this model.")
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

        loaded = self.session.models.get(model, download_report(report, model)).loaded
        return draw.model_note(loaded)

    def check_target(self, model: str | None, target: str | None) -> None:
        """Refuse a class text that names no class exactly, before anything is explained
        (an error in the explain event itself would blank the pictures on the page)."""
        model = choice(model, self.models, "The model", DEFAULT_MODEL)
        try:
            parse_target(target, CATEGORIES)  # every model of the zoo: ImageNet-1k
        except ValueError as error:
            raise refusal(str(error), "Invalid choice") from error

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

    @staticmethod
    def pick_target(selection: gr.SelectData) -> str:
        """A click on one of the top-5 predictions makes it the target."""
        value = selection.value
        if isinstance(value, dict):  # some Gradio versions send {"label": ...}
            value = value.get("label", "")
        return str(value)[:200].removesuffix(draw.EXPLAINED_MARK)

    # ---------------------------------------------------------------- views of a cached one

    @view_event
    def show_layers(self, shown: Shown) -> tuple[Any, ...]:
        """After an explanation: size the layer slider, draw the layer view and the
        summary, and title the overlay with the class it explains (redrawing it when the
        page's colour map is not the one ``/explain`` draws with)."""
        explanation, index, view = shown
        if explanation is None:
            return (gr.skip(),) * 6
        slider = gr.update(maximum=explanation.positions - 1, value=index, interactive=True)
        overlay: dict[str, Any] = {"label": draw.overlay_title(explanation)}
        if view.cmap != viz.DEFAULT_CMAP:
            overlay["value"] = draw.saliency_overlay(explanation, view.opacity, view.cmap)
        return (
            slider,
            *self._layer_view(explanation, index, view),
            draw.summary(explanation),
            gr.update(**overlay),
        )

    def show_grid(self, key: str | None, image: Photo = None, cmap: str | None = None) -> Any:
        """After the layer view: the grid of every layer's map (the paper's Fig. 2)."""
        explanation, _, view = self.shown(key, image, View.checked(cmap=cmap))
        return gr.skip() if explanation is None else draw.layer_gallery(explanation, view.cmap)

    def canvas_data(self, key: str | None, image: Photo = None) -> Any:
        """After an explanation: what the page draws every view from, in the browser
        (:func:`explorer.canvas.payload_json`); gr.skip() when there is nothing shown."""
        explanation = self.cached(key if isinstance(key, str) else None, image)
        return gr.skip() if explanation is None else canvas.payload_json(explanation)

    @view_event
    def render_colours(self, shown: Shown) -> tuple[Any, ...]:
        """Colour map changed: (colour bar, its caption, saliency overlay, layer overlay,
        layer grid); the last three only when there is an explanation."""
        explanation, index, view = shown
        legend = (viz.colorbar_pixels(view.cmap), colour_scale(view.cmap))
        if explanation is None:
            return (*legend, *(gr.skip(),) * 3)
        return (
            *legend,
            draw.saliency_overlay(explanation, view.opacity, view.cmap),
            draw.layer_overlay(explanation, index, view.mode, view.opacity, view.cmap),
            draw.layer_gallery(explanation, view.cmap),
        )

    @staticmethod
    def _layer_view(explanation: Any, index: int, view: View) -> tuple[Any, Any, str]:
        """(layer overlay, caption, chart) at slider position ``index``."""
        return (
            draw.layer_overlay(explanation, index, view.mode, view.opacity, view.cmap),
            draw.layer_caption(explanation, index, view.mode),
            chart_html(explanation, index, view.mode),
        )

    def jump(self, key: str | None, selection: gr.SelectData) -> Any:
        """A click on a map of the layer grid, or on a bar of the chart: move the layer
        slider there. The position is checked like any value from the page."""
        index = selection.index
        if isinstance(index, (list, tuple)):  # a gallery in a grid may send [row, column]
            index = index[0] if len(index) == 1 else None
        view = View.checked(index)
        explanation = self.session.lookup(key if isinstance(key, str) else None)
        if explanation is None:
            return gr.skip()
        return explanation.clamp(view.position)

    # ---------------------------------------------------------------- links, figures

    def view_link(
        self, key: str | None, position: float, mode: str, cmap: str | None = None
    ) -> Any:
        """The query string of a link to the view shown (:func:`explorer.share.view_query`;
        the photo is named only when it is a bundled one)."""
        view = View.checked(position, mode, None, cmap)
        explanation = self.session.lookup(key if isinstance(key, str) else None)
        if explanation is None:
            return gr.skip()
        parsed = parse_key(explanation.key)
        photo = BUNDLED_DIGESTS.get(parsed[0]) if parsed else None
        return share.view_query(
            explanation, photo, explanation.clamp(view.position), view.mode, view.cmap
        )

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

    @view_event
    def figures(self, shown: Shown) -> str:
        """Download figures: the view's figures in a zip (:func:`explorer.share.figures_zip`)."""
        explanation, index, view = shown
        if explanation is None:
            raise refusal("Explain a photo first: the figures are of what is shown.", "Nothing yet")
        data = share.figures_zip(explanation, index, view.mode, view.opacity, view.cmap)
        name = f"t-grad-{explanation.model}-class{explanation.target}-position{index}"
        return str(share.save_figures(FIGURES_DIR, name, data))
