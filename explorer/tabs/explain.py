"""The Explain tab: a photo, a model and a class in; the T-Grad overlay, the top-5, and the
layer slider through the per-layer maps (the paper's Fig. 2) out.

Events, and what they cost:

* Explain button (``/explain`` in the API), a model change, a target change, a click on
  one of the top-5: a new explanation (cached by photo content, model and target), then
  a private follow-up that sizes the layer slider and draws the layer view.
* Layer slider, "alone / up to here" toggle, opacity: re-render the cached explanation
  only (private endpoints, no progress bar, ``trigger_mode="always_last"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from explorer import canvas, widgets
from explorer.chart import CHART_CSS, CHART_JS
from explorer.draw import COLOUR_SCALE
from explorer.events import BUNDLED_PHOTOS
from explorer.explanation import MAX_TARGET_TEXT
from explorer.view import ALONE, MODES, QUERY_MODES
from tgrad import viz

if TYPE_CHECKING:
    from explorer.handlers import Handlers


def example_photos() -> list[list[str]]:
    """The bundled photos, one example row each."""
    return [[str(path)] for path in BUNDLED_PHOTOS]


@dataclass(frozen=True)
class ExplainTab:
    """The Explain tab's components that other tabs share (same photo, model, class)."""

    image: gr.Image
    model: gr.Dropdown
    target: gr.Textbox
    key: gr.State
    cmap: gr.Radio


BIG = 520
"""Height in pixels of the two large pictures (the overlay and the layer view)."""

ADDRESS_BAR_JS = """
(query, layer, mode, cmap) => {
  if (!query) return window.location.href;
  const params = new URLSearchParams(query);
  const modes = MODES;
  params.set('layer', String(layer));
  if (mode in modes) params.set('mode', modes[mode]);
  params.set('cmap', cmap);
  const url = new URL(window.location.href);
  url.search = '?' + params.toString();
  window.history.replaceState(null, '', url);
  return url.toString();
}
""".replace("MODES", json.dumps({shown: name for name, shown in QUERY_MODES.items()}))
"""Puts the view's link in the address bar and returns it for the page's link box: the
server's query string for the explanation shown (:func:`explorer.share.view_query`),
with the slider position, view and colour map as they are now in the page."""


def build(
    handlers: Handlers,
    models: list[tuple[str, str]],
    key: gr.State,
    demo: gr.Blocks | None = None,
    downloads: bool = False,
) -> ExplainTab:
    """Lay out the Explain tab inside the current ``gr.Tabs`` and wire its events.

    ``models`` are the model picker's ``(label, name)`` choices
    (:func:`~explorer.tabs.explain_draw.model_choice`), ``downloads`` whether some of them
    download on first use. With ``demo``, a link's view (:mod:`explorer.share`) is
    applied when the page loads.
    """
    with gr.Tab("Explain", id="explain-tab", elem_id="explain-tab"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                image = gr.Image(
                    type="filepath",
                    label="Photo",
                    sources=["upload", "clipboard"],
                    format="png",
                    height=300,
                    elem_id="input-image",
                )
                examples = gr.Examples(
                    examples=example_photos(),
                    inputs=[image],
                    label="Or pick a bundled photo (it is explained at once)",
                    elem_id="examples",
                )
                model = gr.Dropdown(
                    models,
                    value=models[0][1],
                    label="Model",
                    info=(
                        "A model marked with a download size fetches its weights once, when picked."
                        if downloads
                        else "Offline: the models whose weights are on this machine."
                    ),
                    elem_id="model",
                )
                model_note = gr.Markdown(elem_id="model-note")
                target = gr.Textbox(
                    value="",
                    label="Class to explain",
                    placeholder="empty: the top-1 prediction; or a name or index: espresso, 967",
                    info="Type a class name or its index and press Enter, or click one of "
                    "the top-5 predictions. A partial name lists the classes it could mean.",
                    max_lines=1,
                    max_length=MAX_TARGET_TEXT,
                    elem_id="target",
                )
                explain_button = gr.Button("Explain", variant="primary", elem_id="explain-btn")
                top5 = gr.Label(
                    num_top_classes=5,
                    label="Top-5 predictions (click one to explain it)",
                    elem_id="top5",
                )
            with gr.Column(scale=1, min_width=300):
                overlay = widgets.picture(
                    "T-Grad saliency (over the crop of the photo the model saw)",
                    "T-Grad saliency map over the photo",
                    "overlay",
                    height=BIG,
                )
                colorbar = gr.Image(
                    viz.colorbar_pixels(),
                    format="png",
                    container=False,
                    interactive=False,
                    buttons=[],
                    height=90,
                    alt_text="Colour bar from low to high saliency",
                    elem_id="colorbar",
                )
                scale = gr.Markdown(COLOUR_SCALE, elem_id="colour-scale")
                with gr.Row():
                    cmap = gr.Radio(
                        [(label, name) for name, label in viz.CMAPS.items()],
                        value=viz.DEFAULT_CMAP,
                        label="Colour map",
                        elem_id="cmap",
                    )
                    opacity = gr.Slider(
                        0, 1, value=0.5, step=0.05, label="Map opacity", elem_id="opacity"
                    )
                summary = gr.Markdown(elem_id="summary")

        gr.Markdown("## Layer by layer", elem_id="layers-title")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                layer = gr.Slider(
                    0,
                    1,
                    value=0,
                    step=1,
                    label="Position: 0 is the input term, then one per layer map",
                    interactive=False,
                    elem_id="layer-slider",
                )
                mode = gr.Radio(
                    list(MODES),
                    value=ALONE,
                    label="Show",
                    elem_id="layer-mode",
                )
                caption = gr.Markdown(elem_id="layer-caption")
                layer_image = widgets.picture(
                    "Layer map over the photo",
                    "The selected layer's map over the photo",
                    "layer-image",
                    height=BIG,
                )
            with gr.Column(scale=1, min_width=300):
                chart = gr.HTML(
                    "<p>The decomposition of the logit appears here after Explain.</p>",
                    label="Decomposition of the logit (click a bar to see its map)",
                    show_label=True,
                    container=True,
                    css_template=CHART_CSS,
                    js_on_load=CHART_JS,
                    elem_id="decomposition-chart",
                )
                with gr.Row():
                    link = gr.Textbox(
                        label="Link to this view (for a slide; the address bar has it too)",
                        interactive=False,
                        buttons=["copy"],
                        max_lines=1,
                        elem_id="view-link",
                    )
                link_note = gr.Markdown(elem_id="view-link-note")
                with gr.Row():
                    figures_button = gr.Button("Download figures (zip)", elem_id="figures-btn")
                    figures = gr.File(label="Figures", interactive=False, elem_id="figures")
        gallery = gr.Gallery(
            label="Every layer at once (the paper's Fig. 2), with each term's share: click a "
            "map to show it above, with its name",
            columns=10,
            height="auto",  # every row shown (seven for Lite2); see ui.PAGE_CSS
            allow_preview=False,
            object_fit="contain",
            format="png",
            buttons=["fullscreen"],
            elem_id="layer-grid",
        )
        with gr.Accordion("API: these numbers as JSON", open=False, elem_id="api-numbers"):
            gr.Markdown(
                "What the `/explain` endpoint returns besides the pictures: every term of "
                "the logit in logit units and as a share of the sum of their sizes. Call "
                "it from Python with `gradio_client` (see **Use via API** at the bottom "
                "of the page)."
            )
            decomposition = gr.JSON(label="Decomposition", elem_id="decomposition")
        query = gr.Textbox(visible=False, elem_id="view-query")
        drawing = gr.Textbox(visible=False, elem_id="canvas-data")  # explorer.canvas
        requested = gr.State(0)

    for picture in (overlay, layer_image, gallery):  # sent on every step: encode fast
        widgets.fast_png(picture)
    explain_inputs = [image, model, target, opacity]
    explain_outputs = [overlay, top5, decomposition, key]
    view_inputs = [key, layer, mode, opacity, image, cmap]
    layer_outputs = [layer, layer_image, caption, chart, summary, overlay]
    grid_inputs = [key, image, cmap]
    # preprocess=False: the photo reaches the handlers as Gradio's file payload, not
    # opened by gr.Image with PIL first (which turns a text file named .jpg into a
    # bare "Error"); tgrad.images.load_image decodes it and explains any problem.
    raw: dict[str, Any] = {"preprocess": False}
    private: dict[str, Any] = {**raw, "api_visibility": "private", "show_progress": "hidden"}
    render_options: dict[str, Any] = {
        **private,
        "trigger_mode": "always_last",
        "concurrency_id": "render",
        "concurrency_limit": 4,
    }

    check = (handlers.check_target, [model, target], None)
    again: dict[str, Any] = {
        "api_visibility": "private",
        "concurrency_id": "explain",
        "concurrency_limit": 2,
        "trigger_mode": "always_last",
        **raw,
    }

    def show(explained: Any, position: Any = layer) -> None:
        """After an explanation: the layer view (slider at ``position``), then the grid."""
        inputs = [key, position, mode, opacity, image, cmap]
        drawn = explained.success(handlers.canvas_data, [key, image], drawing, **private)
        drawn.success(handlers.show_layers, inputs, layer_outputs, **private).success(
            handlers.show_grid, grid_inputs, gallery, **private
        )

    def explain_and_show(event: Any) -> None:
        """After ``event``: explain again if there is a photo, then show it."""
        show(event.success(handlers.explain_if_photo, explain_inputs, explain_outputs, **again))

    show(
        explain_button.click(*check, **private).success(
            handlers.explain,
            explain_inputs,
            explain_outputs,
            api_name="explain",
            api_description="Explain a photo: T-Grad overlay (PNG), top-5, decomposition.",
            concurrency_id="explain",
            concurrency_limit=2,
            **raw,
        )
    )
    # a picked model is loaded at once (its download, if any, with a progress bar)
    picked = model.change(  # preprocess=False: the handler checks the value itself
        handlers.prepare_model,
        [model],
        model_note,
        api_visibility="private",
        concurrency_id="explain",
        concurrency_limit=2,
        trigger_mode="always_last",
        preprocess=False,
    )
    explain_and_show(picked.success(*check, **private))
    explain_and_show(target.submit(*check, **private))
    explain_and_show(top5.select(handlers.pick_target, None, target, **private))
    explain_and_show(examples.load_input_event)  # a bundled photo is explained on click
    # every view step is drawn in the browser from the explanation's drawing data
    browser_view = [drawing, layer, mode, opacity, cmap]
    drawing.change(
        None, browser_view, None, js=canvas.LOAD_JS, api_visibility="private", queue=False
    )
    gr.on(
        [layer.change, mode.change, opacity.change, cmap.change],
        None,
        browser_view,
        caption,
        js=canvas.STEP_JS,
        api_visibility="private",
        queue=False,
    )
    cmap.change(
        handlers.render_colours,
        view_inputs,
        [colorbar, scale, overlay, layer_image, gallery],
        **render_options,
    )
    # clicking a map of the grid or a bar of the chart moves the slider (which redraws)
    gallery.select(handlers.jump, [key], layer, **private)
    chart.select(handlers.jump, [key], layer, **private)
    # a new photo starts at the input term (in the browser: no round trip)
    image.change(None, None, layer, js="() => 0", api_visibility="private", queue=False)

    # the address bar follows the view: the server writes the link when an explanation
    # is shown; slider, view and colour map steps only edit it in the browser
    key.change(handlers.view_link, [key, layer, mode, cmap], query, **private)
    key.change(handlers.link_note, [key], link_note, **private)
    gr.on(
        [query.change, layer.change, mode.change, cmap.change],
        None,
        [query, layer, mode, cmap],
        link,
        js=ADDRESS_BAR_JS,
        queue=False,
    )
    if demo is not None:
        demo.load(handlers.prepare_model, [model], model_note, **private)  # what it is
        opened = demo.load(
            handlers.open_link, None, [image, model, target, requested, mode, cmap], **private
        )
        show(  # at the position the link asks for
            opened.success(handlers.explain_if_photo, explain_inputs, explain_outputs, **again),
            requested,
        )
    figures_button.click(handlers.figures, view_inputs, figures, **private)
    return ExplainTab(image, model, target, key, cmap)
