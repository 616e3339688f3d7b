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
  input costs the browser time before it sends the event (the 1001-choice target
  dropdown alone cost tens of milliseconds per slider step).

Errors a user can cause become ``gr.Error`` with a readable message, never a traceback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from explorer import render
from explorer.session import (
    SESSION,
    Explanation,
    Session,
    available_models,
    content_digest,
    parse_key,
    read_upload,
)
from tgrad.decompose import NotDecomposableError
from tgrad.images import ImageLoadError
from tgrad.models import DEFAULT_MODEL, WeightsUnavailableError

log = logging.getLogger(__name__)

NO_PHOTO = "Please upload a photo (or pick one of the bundled photos) first."


def _user_error(message: str, title: str) -> gr.Error:
    """An error the user caused and can fix: shown in the page, not logged as a crash."""
    return gr.Error(message, title=title, print_exception=False)


Photo = str | os.PathLike | dict | None
"""A photo input: a path, or Gradio's file payload (``{"path": ..., ...}``) as the
events deliver it with ``preprocess=False``."""


def photo_path(photo: Photo) -> str | None:
    """The file path of a photo input (None when there is no photo)."""
    if not photo:
        return None
    if isinstance(photo, dict):
        path = photo.get("path")
        if not path:
            raise _user_error("The photo did not arrive as a file; please upload it.", "No photo")
        return str(path)
    return os.fspath(photo)


class Handlers:
    """The callbacks of one app, bound to a session and the models it may load."""

    def __init__(self, session: Session | None = None, models: Sequence[str] | None = None) -> None:
        self.session = session or SESSION
        self.models = tuple(models) if models is not None else tuple(available_models())

    # ---------------------------------------------------------------- heavy: explain

    def compute(
        self, image: Photo, model: str | None, target: str | None, progress: Any = None
    ) -> Explanation:
        """The explanation for these inputs (cached), or gr.Error with a readable message."""
        image = photo_path(image)
        if not image:
            raise _user_error(NO_PHOTO, "No photo")
        model = model or DEFAULT_MODEL
        if model not in self.models:
            choices = ", ".join(self.models)
            raise _user_error(f"Unknown or unavailable model {model!r}; use {choices}.", "Model")

        def report(fraction: float, what: str) -> None:
            if progress is not None:
                progress(fraction, desc=what)

        try:
            return self.session.explain(image, model, target, report)
        except ImageLoadError as error:
            message = f"{Path(image).name}: {error}"
            raise _user_error(message, "Cannot use this file") from error
        except WeightsUnavailableError as error:
            raise _user_error(str(error), "Model not available") from error
        except NotDecomposableError as error:
            raise _user_error(str(error), "Model cannot be explained") from error
        except ValueError as error:  # unknown class or model name
            raise _user_error(str(error), "Invalid choice") from error
        except MemoryError as error:
            raise _user_error("Not enough memory to explain this photo.", "Too large") from error
        except Exception as error:  # anything else: log it, show a short message
            log.exception("explaining %r failed", image)
            raise gr.Error(
                f"Explaining failed unexpectedly ({type(error).__name__}). "
                "Please try another photo."
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
        explanation = self.compute(image, model, target, progress)
        return (
            render.saliency_overlay(explanation, opacity),
            render.top5_label(explanation),
            render.decomposition(explanation),
            explanation.key,
        )

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
        (cached examples, API clients) with the default model and the top-1 class.
        """
        explanation = self.session.lookup(key)
        image = photo_path(image)
        if explanation is not None or not image:
            return explanation
        model, target = DEFAULT_MODEL, None
        parsed = parse_key(key)
        if parsed is not None:
            digest, model, target = parsed
            try:
                if content_digest(read_upload(image)) != digest:
                    return None  # a new photo, not explained yet: keep what is shown
            except ImageLoadError:
                return None
        return self.compute(image, model, None if target is None else str(target))

    def show_layers(
        self,
        key: str | None,
        position: float,
        mode: str,
        opacity: float,
        image: Photo = None,
    ) -> tuple[Any, ...]:
        """After an explanation: size the layer slider, draw the layer view and summary."""
        explanation = self._cached(key, image)
        if explanation is None:
            return (gr.skip(),) * 5
        index = explanation.clamp(position)
        slider = gr.update(maximum=explanation.positions - 1, value=index, interactive=True)
        return (
            slider,
            render.layer_overlay(explanation, index, mode, opacity),
            render.layer_caption(explanation, index, mode),
            render.chart_html(explanation, index, mode),
            render.summary(explanation),
        )

    def render_layer(
        self,
        key: str | None,
        position: float,
        mode: str,
        opacity: float,
        image: Photo = None,
    ) -> tuple[Any, ...]:
        """Layer slider or mode moved: (layer overlay, caption, chart)."""
        explanation = self._cached(key, image)
        if explanation is None:
            return (gr.skip(),) * 3
        index = explanation.clamp(position)
        return (
            render.layer_overlay(explanation, index, mode, opacity),
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
    ) -> tuple[Any, ...]:
        """Opacity moved: (saliency overlay, layer overlay)."""
        explanation = self._cached(key, image)
        if explanation is None:
            return (gr.skip(),) * 2
        index = explanation.clamp(position)
        return (
            render.saliency_overlay(explanation, opacity),
            render.layer_overlay(explanation, index, mode, opacity),
        )

    @staticmethod
    def pick_target(selection: gr.SelectData) -> str:
        """A click on one of the top-5 predictions makes it the target."""
        value = selection.value
        if isinstance(value, dict):  # some Gradio versions send {"label": ...}
            value = value.get("label", "")
        return str(value)
