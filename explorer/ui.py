"""The page: :func:`build_demo` assembles the tabs, each laid out and wired in its own
module (:mod:`explorer.tabs`), and holds the launch settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from explorer.cache import offered_models
from explorer.events import BUNDLED_PHOTOS, MAX_UPLOAD_MB
from explorer.guard import GuardedBlocks
from explorer.handlers import Handlers
from explorer.session import SESSION, Session
from explorer.tabs import compare, evaluate, explain, sanity
from explorer.tabs.explain_draw import model_choice
from tgrad.models import DEFAULT_MODEL

GUIDE = (Path(__file__).resolve().parent / "guide.md").read_text(encoding="utf-8")
GUIDE_MARK = "<!-- figure: tangent intercepts -->"
"""Where in :data:`GUIDE` the tangent-intercepts figure goes (the guide is shown in two
parts around it)."""
GUIDE_FIGURE = Path(__file__).resolve().parent.parent / "assets" / "tangent_intercepts.png"
"""ReLU's and SiLU's tangents and their intercepts (made by ``assets/make_figures.py``)."""
MAX_FILE_SIZE = f"{MAX_UPLOAD_MB}mb"
SESSION_CAPACITY = 256
"""Browser/API sessions whose Gradio state the server keeps (Gradio's default is 10,000).

Gradio keeps a copy of every component's config per session (the README's design
section says how much for this page), so 10,000 sessions can hold gigabytes; 256 hold
a full classroom's tabs in tens of megabytes. A session evicted early
only loses its cache key: its next slider move recomputes the explanation from the
photo, within the same process-wide limit as any other explanation."""

QUEUE_OPTIONS: dict[str, Any] = {"max_size": 32, "default_concurrency_limit": 2}
"""``demo.queue(**QUEUE_OPTIONS)``: at most 32 waiting jobs; 2 explanations at a time."""

PAGE_CSS = """
/* The layer grid (the paper's Fig. 2): its columns shrink to fit any width (Gradio's
   100 px minimum cut the tenth column, the head, at a 1024 px projector width), and
   its height follows its rows (Lite1 and Lite2 have seven). */
#layer-grid .grid-container {
  grid-template-columns: repeat(var(--grid-cols), minmax(0, 1fr));
  grid-template-rows: none;
  grid-auto-rows: auto;
}
#layer-grid .grid-wrap { height: auto !important; max-height: none !important; }
#layer-grid .caption-label { font-size: var(--text-xs); padding: 1px 4px; max-width: 100%; }
/* The Evaluate table: headers wrap, so that every column fits the tab. */
#scores th, #scores th * {
  white-space: normal !important; overflow-wrap: break-word; font-size: var(--text-sm);
}
"""
"""The page's own styles (``launch(css=...)``)."""

LAUNCH_OPTIONS: dict[str, Any] = {
    "css": PAGE_CSS,
    "max_file_size": MAX_FILE_SIZE,
    # the photos and the guide's figure, nothing else
    "allowed_paths": [*(str(path) for path in BUNDLED_PHOTOS), str(GUIDE_FIGURE)],
    "state_session_capacity": SESSION_CAPACITY,
}
"""``demo.launch(**LAUNCH_OPTIONS)``; host and port come from GRADIO_SERVER_NAME/PORT."""


def build_demo(session: Session | None = None) -> gr.Blocks:
    """The T-Grad Explorer page, its callbacks bound to ``session`` (default: the app's).
    Every request's inputs are checked before Gradio processes them
    (:class:`~explorer.guard.GuardedBlocks`)."""
    offered = offered_models()
    choices = [model_choice(info) for info in offered] or [(DEFAULT_MODEL, DEFAULT_MODEL)]
    handlers = Handlers(session or SESSION, [name for _, name in choices])
    downloads = any(not info.available for info in offered)

    with GuardedBlocks(
        title="T-Grad Explorer", delete_cache=(3600, 3600), gate=handlers.gate
    ) as demo:
        key = gr.State("")
        gr.Markdown(
            "# T-Grad Explorer\n"
            "Drop in a photo, click **Explain**, then move the layer slider to watch the "
            "model's decision come apart layer by layer. New here? Open the "
            "**How to read this** tab.",
            elem_id="title",
        )
        with gr.Tabs(elem_id="tabs"):
            shared = explain.build(handlers, choices, key, demo, downloads)
            demo.optional.add(shared.cmap._id)  # added to /compare later: may be left out
            compare.build(handlers, shared)
            evaluate.build(handlers, shared)
            sanity.build(handlers, shared)
            with gr.Tab("How to read this", id="guide-tab", elem_id="guide-tab"):
                before, _, after = GUIDE.partition(GUIDE_MARK)
                gr.Markdown(before, elem_id="guide")
                gr.Image(
                    str(GUIDE_FIGURE),
                    format="png",
                    label="A tangent and its intercept: ReLU (left), SiLU (right)",
                    interactive=False,
                    buttons=["fullscreen"],
                    alt_text="ReLU and SiLU with their tangent lines; ReLU's crosses zero "
                    "input at 0, SiLU's tangent at 2 crosses it at -0.42, its intercept",
                    elem_id="guide-figure",
                )
                gr.Markdown(after, elem_id="guide-intercepts")
    return demo
