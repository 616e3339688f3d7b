"""The explorer's engine front: :class:`Session`, one per process, safe from several
threads: the bounded model and explanation caches, the process-wide work slots, and the
heavy work itself.

The photo is decoded, preprocessed and explained in :meth:`Session.explain`, once per
(photo content, model, target); the :class:`~explorer.explanation.Explanation` stays in an
LRU keyed by a hash of the file's bytes plus the model and the target, so re-rendering
(layer slider, opacity, mode) never recomputes; the browser session only holds the key in
a ``gr.State``. The method tabs' work is :class:`~explorer.work.MethodWork`'s.

Nothing here imports Gradio: the callbacks turn the errors raised here
(:class:`~tgrad.images.ImageLoadError`, ``ValueError``,
:class:`~tgrad.models.WeightsUnavailableError`) into messages for the page
(:mod:`explorer.errors`).
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from explorer.cache import LRU, MAX_MODELS, ModelCache, download_report
from explorer.explanation import (
    Explanation,
    MethodMap,
    MethodScore,
    SanityRun,
    content_key,
    parse_target,
)
from explorer.jobs import EXPLAIN, Progress, WorkSlots, reporter
from explorer.kept import KeptResult
from explorer.work import MethodWork
from tgrad.images import load_image
from tgrad.layers import layer_labels
from tgrad.models import DEFAULT_MODEL, LoadedModel, load_model

MAX_EXPLANATIONS = 16
MAX_CONCURRENT_EXPLANATIONS = 2
"""Explanations computed at once in the whole process, whatever event asks for one."""
MAX_METHOD_MAPS = 128
"""Method maps kept for the Compare tab (a 224 x 224 map is 200 KB: 128 are 25 MB)."""
DISPLAY_SCALE = 2
"""The Explain tab's pictures are drawn over the photo at this many times the model's
input size (448 px for a 224 px model): maps are upsampled smoothly anyway, but the
photo under them stays sharp on a projector. Twice, not more: each slider step sends
one such PNG, four times the pixels of scale 1 (``benchmarks/bench_explorer.py`` times 1
against 2; the README says why 2). ``EXPLORER_DISPLAY_SCALE`` (1, 2 or 3) changes it,
e.g. to 1 for a slow network."""
DISPLAY_SCALES = (1, 2, 3)
MAX_SANITY_RUNS = 4


def display_scale() -> int:
    """``EXPLORER_DISPLAY_SCALE`` if it is one of :data:`DISPLAY_SCALES`, else
    :data:`DISPLAY_SCALE`."""
    value = os.environ.get("EXPLORER_DISPLAY_SCALE", "").strip()
    return int(value) if value in {str(s) for s in DISPLAY_SCALES} else DISPLAY_SCALE


class Session(MethodWork):
    """The app's engine front: cached models, cached explanations, and counters.

    One instance serves every browser session; it is safe to use from several threads.
    """

    def __init__(
        self,
        max_models: int = MAX_MODELS,
        max_explanations: int = MAX_EXPLANATIONS,
        loader: Callable[[str], LoadedModel] = load_model,
        max_concurrent: int = MAX_CONCURRENT_EXPLANATIONS,
        max_maps: int = MAX_METHOD_MAPS,
        display: int | None = None,
    ) -> None:
        self.models = ModelCache(max_models, loader)
        self.display = display_scale() if display is None else display
        """How many times the model's input size the Explain tab's pictures are drawn."""
        self.explanations: LRU[str, Explanation] = LRU(max_explanations)
        self.computed = 0
        """How many explanations were computed (cache misses), for tests and logs."""
        self._count_lock = threading.Lock()
        self.maps: LRU[str, MethodMap] = LRU(max_maps)
        """Maps of the Compare tab's methods, keyed by explanation key and method."""
        self.scores: LRU[str, MethodScore] = LRU(max_maps)
        """Insertion/deletion and Average Drop/Increase of those maps, by step count."""
        self.sanity_runs: LRU[str, SanityRun] = LRU(MAX_SANITY_RUNS)
        """Finished cascades (a stopped one is not kept)."""
        self.work = WorkSlots(max_concurrent)
        """The one process-wide limit on heavy work (each costs up to a few hundred MB and
        a core), whichever event asks: explanations first (:data:`EXPLAIN`), then the
        rest, which gives its slot to a waiting explanation between chunks."""

    def lookup(self, key: str | None) -> Explanation | None:
        """The cached explanation for ``key`` (None for an empty, unknown or evicted key)."""
        if not key or not isinstance(key, str):
            return None
        return self.explanations.get(key)

    def explain(
        self,
        data: bytes,
        model: str = DEFAULT_MODEL,
        target: str | int | None = None,
        progress: Progress | None = None,
    ) -> Explanation:
        """Explain the photo whose file bytes are ``data`` (cached by content, model and
        target). At most ``max_concurrent`` computations run at once in the process;
        an explanation waits only for those running (it goes before any other waiting
        work), and a cache hit never waits.

        Raises:
            ImageLoadError: the bytes are not a usable image (message for the user).
            ValueError: unknown model or class.
            WeightsUnavailableError: the model's weights are not available.
        """
        report = reporter(progress)
        report(0.05, f"loading model {model}")
        entry = self.models.get(model, download_report(report, model))
        categories = entry.loaded.categories
        target_index = parse_target(target, categories)
        key = content_key(data, model, target_index)
        cached = self.explanations.get(key)
        if cached is not None:
            return cached
        report(0.1, "waiting for a free slot")
        preprocessing = entry.loaded.preprocessing
        with self.work.hold(EXPLAIN):
            cached = self.explanations.get(key)  # computed while this call waited
            if cached is not None:
                return cached
            report(0.2, "decoding the photo")
            photo = load_image(io.BytesIO(data))
            x = preprocessing(photo)[None]
            report(0.35, "explaining (forward + backward)")
            start = time.perf_counter()
            result = entry.explainer(x, target_index)
            seconds = time.perf_counter() - start
            kept = KeptResult.of(result)
            labels = tuple(layer_labels(entry.loaded.module, result.terms))
            del result  # its record holds every call's tensors and the model's modules
            display = None
            if self.display != 1:
                display = np.asarray(preprocessing.crop_image(photo, self.display))
            del photo
        explanation = Explanation(
            key, model, preprocessing, kept, categories, x, seconds, labels, display
        )
        self.explanations.put(key, explanation)
        with self._count_lock:
            self.computed += 1
        report(1.0, "done")
        return explanation


def set_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads for the server (default: ``EXPLORER_TORCH_THREADS`` or 1).

    One thread per explanation, with up to two explanations running at once, uses both
    cores of a small Space without oversubscribing them: with more threads per call,
    threads spin at every barrier waiting for a descheduled partner whenever anything
    else runs (the README's design section has what that cost). Returns the number
    set.
    """
    if threads is None:
        threads = int(os.environ.get("EXPLORER_TORCH_THREADS", "1"))
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def warm_up(session: Session, model: str = DEFAULT_MODEL) -> None:
    """Load ``model`` and run it once on a grey image, so the first click is fast."""
    entry = session.models.get(model)
    crop = entry.loaded.preprocessing.crop
    grey = torch.full((1, 3, crop, crop), 0.5)
    entry.explainer(entry.loaded.preprocessing.normalize(grey))


SESSION = Session()
"""The process-wide session the app uses."""
