"""What every tab's callbacks share: :class:`Events`, bound to a session and the models it
may load, with the photo behind the page's gate, the explanation a view shows (cached,
else recomputed from the photo), the runs with their Stop tokens, and the method list
checked. The tabs' own callbacks (:mod:`explorer.tabs`) build on it, and
:class:`explorer.handlers.Handlers` gathers them.

The explanation a view event shows comes from the key in the page's ``gr.State``; when it
is empty or no longer cached (cached examples and API clients don't restore State, the
LRU may have evicted it) it is recomputed from the photo input (:meth:`Events.cached`),
and when there is no photo either, nothing changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import gradio as gr

from explorer.cache import available_models
from explorer.errors import page_errors
from explorer.explanation import Explanation, content_digest, parse_key
from explorer.guard import refusal
from explorer.jobs import Run, Runs
from explorer.session import SESSION, Session
from explorer.uploads import PhotoGate, PhotoRejected, default_gate
from explorer.view import View, choice
from tgrad.models import DEFAULT_MODEL, imagenet_categories

log = logging.getLogger(__name__)
R = TypeVar("R")

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
MAX_UPLOAD_MB = 25
"""The largest photo file accepted, in MB (``launch(max_file_size=...)`` says the same)."""
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

Photo = str | dict | None
"""A photo input: Gradio's file payload (``{"path": ..., ...}``) as the events deliver
it with ``preprocess=False``, or a path. Checked by a :class:`PhotoGate` before use."""


def page_of(request: gr.Request | None) -> str:
    """The page (Gradio session) a request comes from ("" for a direct call)."""
    return str(getattr(request, "session_hash", None) or "")


class Shown(NamedTuple):
    """What a view event draws: the explanation (None: nothing to show), the slider
    position clamped to it, and the view controls, checked."""

    explanation: Explanation | None
    index: int
    view: View


def view_event(draw: Callable[[Any, Shown], R]) -> Callable[..., R]:
    """Make ``draw(self, shown)`` a view event of the Explain tab: a callback taking what
    the page sends, ``(key, position, mode, opacity, image, cmap)`` (the cache key, the
    :class:`~explorer.view.View` controls and the photo, in the order of the tab's
    ``view_inputs``), that checks the controls, finds the explanation they show
    (:meth:`Events.shown`) and hands it to ``draw``. The event keeps ``draw``'s name
    (its private endpoint's) and docstring."""

    def event(
        self: Events,
        key: str | None = None,
        position: object = None,
        mode: object = None,
        opacity: object = None,
        image: Photo = None,
        cmap: object = None,
    ) -> R:
        return draw(self, self.shown(key, image, View.checked(position, mode, opacity, cmap)))

    event.__name__, event.__qualname__ = draw.__name__, draw.__qualname__
    event.__doc__, event.__module__ = draw.__doc__, draw.__module__
    return event


class Events:
    """The callbacks' common ground: one app's session, models, photo gate and runs."""

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
            raise refusal(str(error), "Cannot use this file") from error

    # ---------------------------------------------------------------- heavy: explain

    def compute(
        self, image: Photo, model: str | None, target: str | None, progress: Any = None
    ) -> Explanation:
        """The explanation for these inputs (cached), or gr.Error with a readable message."""
        model = choice(model, self.models, "The model", DEFAULT_MODEL)
        data = self.read_photo(image)
        if data is None:
            raise refusal(NO_PHOTO, "No photo")
        return self._explain(data, model, target, progress)

    @page_errors(
        "Not enough memory to explain this photo.",
        failed="Explaining failed unexpectedly. Please try another photo.",
        user_values=True,
    )
    def _explain(self, data: bytes, model: str, target: Any, progress: Any = None) -> Explanation:
        def report(fraction: float, what: str) -> None:
            if progress is not None:
                progress(fraction, desc=what)

        return self.session.explain(data, model, target, report)

    def cached(self, key: str | None, image: Photo) -> Explanation | None:
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

    def shown(self, key: object, image: Photo, view: View) -> Shown:
        """The explanation ``view`` shows (None: nothing to show), at its slider position
        clamped to it."""
        explanation = self.cached(key if isinstance(key, str) else None, image)
        index = 0 if explanation is None else explanation.clamp(view.position)
        return Shown(explanation, index, view)

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
        self.runs.stop("compare", page_of(request))

    def stop_evaluate(self, request: gr.Request | None = None) -> None:
        """The Evaluate tab's Stop button: this page's evaluations stop."""
        self.runs.stop("evaluate", page_of(request))

    def stop_sanity(self, request: gr.Request | None = None) -> None:
        """The Sanity tab's Stop button: this page's cascades stop."""
        self.runs.stop("sanity", page_of(request))

    def _press(self, kind: str, request: gr.Request | None) -> str:
        """A run button was pressed: the run's id (for the page's ``gr.State``, read by
        the run when its work begins). A run of the same page and kind still going is
        stopped, and the page says that the new one replaces it."""
        run, replaced = self.runs.press(kind, page_of(request))
        if replaced:
            log.info("%s pressed again on one page: the running one stops", kind)
            gr.Info(REPLACED[kind])
        return run.id

    def _begin(self, kind: str, request: gr.Request | None, run_id: object) -> Run:
        return self.runs.begin(kind, page_of(request), run_id)

    @staticmethod
    def method_list(methods: object) -> list[str]:
        """The methods asked for, checked against the registry (order kept, no repeats)."""
        from tgrad.methods import METHODS

        if isinstance(methods, str):
            methods = [methods]
        if not isinstance(methods, (list, tuple)) or not methods:
            raise refusal("Pick at least one method.", "No method")
        if len(methods) > len(METHODS) or not all(isinstance(m, str) for m in methods):
            raise refusal("Pick methods from the list.", "Invalid choice")
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise refusal(f"Unknown method; pick from: {', '.join(METHODS)}.", "Invalid choice")
        return list(dict.fromkeys(methods))
