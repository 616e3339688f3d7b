"""Server-side state of the explorer: a bounded model cache and a bounded explanation cache.

The heavy work (decode the photo, preprocess, run T-Grad) happens in
:meth:`Session.explain`, once per (photo content, model, target). Its result, an
:class:`Explanation`, stays in an LRU cache keyed by a hash of the file's bytes plus the
model and the target, so re-rendering (layer slider, opacity, mode) never recomputes; the
browser session only holds the key in a ``gr.State``.

Nothing here imports Gradio: the callbacks in :mod:`explorer.handlers` translate the
errors raised here (:class:`~tgrad.images.ImageLoadError`, ``ValueError``,
:class:`~tgrad.models.WeightsUnavailableError`) into messages for the page.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from explorer import allocator
from explorer.jobs import EXPLAIN, SLOW, Chunks, Clock, StopFlag, WorkSlots, check_stop
from explorer.kept import KeptResult
from tgrad.decompose import Term
from tgrad.images import load_image
from tgrad.labels import find_class, top_k
from tgrad.layers import LayerLabel, layer_labels
from tgrad.models import (
    DEFAULT_MODEL,
    DownloadProgress,
    LoadedModel,
    ModelInfo,
    load_model,
    zoo,
)
from tgrad.preprocessing import Preprocessing
from tgrad.tgrad import TGrad, upsample
from tgrad.viz import to_uint8_image, total_size

TOP1 = "top-1 (predicted)"
"""The target picker's first choice: explain whatever the model predicts."""

MAX_MODELS = 2
MAX_EXPLANATIONS = 16
MAX_CONCURRENT_EXPLANATIONS = 2
"""Explanations computed at once in the whole process, whatever event asks for one."""
STOP_CHUNK = 8
"""Images per forward for the slow methods: the most work done after Stop is pressed."""
MAX_METHOD_MAPS = 128
"""Method maps kept for the Compare tab (a 224 x 224 map is 200 KB: 128 are 25 MB)."""
SANITY_MAP_SIZE = 112
"""Side of the maps a cascade keeps: the grid shows many small panels."""
DISPLAY_SCALE = 2
"""The Explain tab's pictures are drawn over the photo at this many times the model's
input size (448 px for a 224 px model): maps are upsampled smoothly anyway, but the
photo under them stays sharp on a projector. Twice, not more: each slider step sends
one such PNG (about 260 kB at 448 px), and a step takes longer in the browser
(``benchmarks/bench_explorer.py`` times 1 against 2). ``EXPLORER_DISPLAY_SCALE`` (1, 2
or 3) changes it, e.g. to 1 for a slow network."""
DISPLAY_SCALES = (1, 2, 3)
MAX_SANITY_RUNS = 4
SANITY_SEED = 0
MAX_KEY_LENGTH = 200
"""The longest cache key (a 32-digit hash, a model name, a class index)."""
MAX_TARGET_TEXT = 120
"""The longest class text accepted from a user (the longest ImageNet name has 86)."""


def method_label(method: str) -> str:
    """The name a method goes by on the page, e.g. ``"Integrated Gradients"``."""
    from tgrad.methods import METHODS

    return METHODS[method].description.partition(":")[0]  # "GradCAM: ..." -> "GradCAM"


def display_scale() -> int:
    """``EXPLORER_DISPLAY_SCALE`` if it is one of :data:`DISPLAY_SCALES`, else
    :data:`DISPLAY_SCALE`."""
    value = os.environ.get("EXPLORER_DISPLAY_SCALE", "").strip()
    return int(value) if value in {str(s) for s in DISPLAY_SCALES} else DISPLAY_SCALE


Progress = Callable[[float, str], None]
"""``progress(fraction done, what is happening)``."""


def _quiet(fraction: float, what: str) -> None:
    return None


def reporter(progress: Progress | None) -> Progress:
    """``progress``, or a report that goes nowhere. (Not ``progress or ...``: a
    ``gr.Progress`` has a length, 0, so it is false, and its reports were lost.)"""
    return _quiet if progress is None else progress


K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A thread-safe dict that keeps at most ``capacity`` entries, least recently used out."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value for ``key`` (now the most recently used), or None."""
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: K, value: V) -> None:
        """Store ``value``, evicting the least recently used entries beyond capacity."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def keys(self) -> list[K]:
        """The keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass(frozen=True)
class ModelEntry:
    """A loaded model with its explainer (TGrad may be called from several threads)."""

    loaded: LoadedModel
    explainer: TGrad


class ModelCache:
    """At most ``capacity`` models in memory; each is loaded once even under concurrency."""

    def __init__(
        self, capacity: int = MAX_MODELS, loader: Callable[..., LoadedModel] = load_model
    ) -> None:
        self._entries: LRU[str, ModelEntry] = LRU(capacity)
        self._loader = loader
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, name: str, progress: DownloadProgress | None = None) -> ModelEntry:
        """The model ``name`` (loading it if needed; may raise WeightsUnavailableError).

        ``progress(bytes_done, bytes_total)`` is called while its weights download, if
        they do (the loader is called as ``loader(name, progress=progress)``).
        """
        entry = self._entries.get(name)
        if entry is not None:
            return entry
        with self._lock:
            name_lock = self._loading.setdefault(name, threading.Lock())
        with name_lock:  # a second thread asking for the same model waits for the first
            entry = self._entries.get(name)
            if entry is None:
                loaded = (
                    self._loader(name)
                    if progress is None
                    else self._loader(name, progress=progress)
                )
                entry = ModelEntry(loaded, TGrad(loaded.module))
                self._entries.put(name, entry)
        return entry

    def names(self) -> list[str]:
        """The models in memory, least recently used first."""
        return self._entries.keys()


def offered_models(allow_downloads: bool | None = None) -> list[ModelInfo]:
    """The models the page offers (:func:`tgrad.models.zoo`), the offline default first:
    those whose weights are on disk and, where downloads are allowed, those that
    download on first use."""
    return sorted(zoo(allow_downloads), key=lambda m: m.name != DEFAULT_MODEL)


def available_models() -> list[str]:
    """The names of :func:`offered_models`."""
    return [info.name for info in offered_models()]


def download_report(report: Progress, model: str) -> DownloadProgress:
    """A weights download's ``progress(done, total)`` as a progress report."""

    def downloading(done: int, total: int) -> None:
        megabytes = f"{done / 1e6:.0f} of {total / 1e6:.0f} MB" if total else "starting"
        report(done / total if total else 0.0, f"downloading the weights of {model}: {megabytes}")

    return downloading


def parse_target(text: str | int | None, categories: Sequence[str]) -> int | None:
    """The class to explain: None for the top-1, else an index.

    Accepts the top-5's ``"967: espresso"``, an index (``967`` or ``"967"``) or an exact
    name (any case). Anything else raises ValueError with a message for the user that
    lists the classes whose names contain the text: never the first partial match.
    """
    if text is None:
        return None
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError("The class must be given as a name or an index.")
    value = str(text).strip()
    if value in ("", TOP1):
        return None
    if len(value) > MAX_TARGET_TEXT:
        raise ValueError(
            f"That class text is too long ({len(value)} characters); type a class name "
            "or its index."
        )
    head, colon, _ = value.partition(":")
    if colon and head.strip().isdigit():
        value = head.strip()
    return find_class(value, categories, partial=False)


@dataclass(frozen=True)
class Explanation:
    """One explained photo: what the model saw, the T-Grad result and the class names.

    It keeps only what the views need (:class:`~explorer.kept.KeptResult`: maps on
    their own grids, the terms' numbers, the logits; the model's input; the large crop
    of the photo): under 2 MB for EfficientNet-Lite0, and no reference to the model or
    to the record of the pass (``tests/test_explorer_memory.py``).
    """

    key: str
    model: str
    preprocessing: Preprocessing = field(repr=False)
    """The model's preprocessing (``pixels`` are the input ``x`` in pixel space)."""
    result: KeptResult
    """T-Grad for a batch of one."""
    categories: Sequence[str] = field(repr=False)
    x: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0))
    """The model's input [1,C,H,W] (normalised), for the methods of the Compare tab."""
    seconds: float = 0.0
    """How long the T-Grad pass took (wall clock)."""
    labels: tuple[LayerLabel, ...] = field(repr=False, default=())
    """A readable name for each term of ``result`` (:func:`tgrad.layers.layer_labels`);
    empty: show the module names."""
    display: np.ndarray | None = field(repr=False, default=None)
    """The same crop of the photo at :data:`DISPLAY_SCALE` times the size, uint8
    [H,W,3], to draw the Explain tab's large pictures over (None: use ``pixels``)."""

    @property
    def pixels(self) -> np.ndarray:
        """The model's input in pixel space, uint8 [H,W,3] (the centre crop it saw),
        made from ``x`` when asked (a fraction of a millisecond; not kept)."""
        return to_uint8_image(self.preprocessing.to_pixels(self.x[0]))

    @property
    def backdrop(self) -> np.ndarray:
        """What the large pictures are drawn over: ``display``, else ``pixels``."""
        return self.pixels if self.display is None else self.display

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the entry holds (for accounting)."""
        return [self.x, *self.result.tensors()]

    @cached_property
    def spatial_terms(self) -> tuple[Term, ...]:
        """The terms with a map, input first: the layer slider's positions."""
        return self.result.spatial_terms

    @cached_property
    def term_indices(self) -> tuple[int, ...]:
        """For each slider position, the index of its term in ``result.terms``."""
        return tuple(i for i, t in enumerate(self.result.terms) if t.spatial)

    @property
    def positions(self) -> int:
        """Number of slider positions (input + one per layer map)."""
        return len(self.spatial_terms)

    @property
    def target(self) -> int:
        return int(self.result.target[0])

    @property
    def target_label(self) -> str:
        return f"{self.target}: {self.categories[self.target]}"

    @property
    def logit(self) -> float:
        return float(self.result.logit[0])

    @property
    def probability(self) -> float:
        return float(torch.softmax(self.result.logits[0].double(), 0)[self.target])

    @property
    def gap(self) -> float:
        return float(self.result.gap[0])

    @cached_property
    def total_size(self) -> float:
        """The sum of the absolute contributions of all terms: what shares are of."""
        return total_size(self.result)

    def title(self, term_index: int) -> str:
        """The readable name of ``result.terms[term_index]`` (its module path if none)."""
        if self.labels:
            return self.labels[term_index].title
        return self.result.terms[term_index].name

    def top5(self) -> list[tuple[int, str, float]]:
        """The five most probable classes: (index, name, probability)."""
        return top_k(self.result.logits[0], self.categories, 5)

    def clamp(self, position: float | int | None) -> int:
        """A slider value as a valid position (rounded, clipped to 0..positions-1)."""
        index = round(float(position or 0))
        return min(max(index, 0), self.positions - 1)

    def layer_map(self, position: int, cumulative: bool) -> torch.Tensor:
        """What the slider shows at ``position`` [h,w] (any scale).

        ``cumulative=False``: that term's own map (its positive part summed over
        channels) on its grid. ``True``: the T-Grad
        saliency built from the terms up to this one; at the last position it is the
        full T-Grad saliency, bit for bit.
        """
        if cumulative:
            return self.result.cumulative(position)[0]
        layer = self.spatial_terms[position].map
        assert layer is not None  # spatial terms have maps
        return layer[0]


def content_digest(data: bytes) -> str:
    """A hash of a file's bytes (hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def content_key(data: bytes, model: str, target: int | None) -> str:
    """The cache key ``digest:model:target``: the file's hash, the model, the target
    index or ``top1``."""
    return f"{content_digest(data)}:{model}:{'top1' if target is None else target}"


def parse_key(key: str | None) -> tuple[str, str, int | None] | None:
    """``(digest, model, target)`` from a :func:`content_key` (None if it is not one)."""
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH:
        return None
    parts = key.split(":")
    if len(parts) != 3 or not all(parts):
        return None
    if not (parts[2] == "top1" or (parts[2].isascii() and parts[2].isdigit())):
        return None
    if len(parts[2]) > 6:  # no class index has more digits
        return None
    digest, model, target = parts
    return digest, model, None if target == "top1" else int(target)


@dataclass(frozen=True)
class MethodMap:
    """One method's map of an explained photo, as the Compare tab shows it."""

    method: str
    map: torch.Tensor
    """The raw map [H,W] at the input's resolution (un-normalised), on the CPU."""
    seconds: float
    """Wall-clock time of the computation that made it; for methods that shared one
    pass, the time of that pass."""
    shared_with: int = 1
    """How many methods that pass computed (1: the method ran alone)."""
    layer: str | None = None
    """The layer a CAM method used, when it says."""
    convergence_delta: float | None = None
    """For a method that integrates along a path (Integrated Gradients): ``sum of the
    attribution - (y(x) - y(baseline))`` in logit units (SPEC 3); None for the others."""


@dataclass(frozen=True)
class MethodScore:
    """How faithful one method's map is on an explained photo (SPEC 4), for the Evaluate tab."""

    method: str
    n_steps: int
    fractions: torch.Tensor
    """[n_steps+1]: fraction of pixels changed at each point of the curves."""
    insertion: torch.Tensor
    """[n_steps+1]: probability of the class as its top-ranked pixels are put back."""
    deletion: torch.Tensor
    """[n_steps+1]: probability of the class as its top-ranked pixels are removed."""
    insertion_auc: float
    deletion_auc: float
    average_drop: float
    """Average Drop % for this one photo: ``100 * max(0, Y - O) / Y``."""
    increase: float
    """% Increase in Confidence for this one photo: 100 if ``O > Y``, else 0."""
    seconds: float
    """Wall-clock time of the metrics (not of the map)."""

    @property
    def insertion_minus_deletion(self) -> float:
        return self.insertion_auc - self.deletion_auc


@dataclass(frozen=True)
class SanityStep:
    """One step of a cascading randomization, as the Sanity tab keeps it."""

    group: str
    """The group randomized at this step (``"original"`` at step 0)."""
    maps: dict[str, torch.Tensor]
    """Method -> its map [s,s] at :data:`SANITY_MAP_SIZE` (bilinear), on the CPU."""
    similarity: dict[str, dict[str, float]]
    """Method -> measure -> similarity to step 0's map."""
    seconds: float


@dataclass
class SanityRun:
    """A cascade in progress or done: its steps so far, cached by photo, model, class,
    methods and seed."""

    methods: tuple[str, ...]
    steps: list[SanityStep] = field(default_factory=list)
    groups: int = 0
    """How many groups the model has (the run is complete at ``groups + 1`` steps)."""
    names: tuple[str, ...] = ()
    """A readable name for each group, in randomization order (:func:`group_title`)."""

    @property
    def complete(self) -> bool:
        return len(self.steps) == self.groups + 1


def forwards(method: str) -> float:
    """About how many forwards ``method`` runs of its own, to run the quick ones first: 0
    for the single-pass methods (they share one pass), its step or sample count for
    Integrated Gradients and SmoothGrad, one per channel of its layer for ScoreCAM
    (hundreds: counted as infinite), 1 for any other (Guided Backprop's own pass)."""
    from tgrad.methods import METHODS

    info = METHODS[method]
    if info.single_pass:
        return 0.0
    if method == "scorecam":
        return math.inf
    options = info.options
    return float(options.get("steps", options.get("samples", 1)))


class _Observed(nn.Module):
    """``model``, with ``before(images)`` called before each of its forwards: how the
    metrics' chunks are seen (Stop, progress, the slot given up) without changing the
    metrics. In eval mode; ``model`` itself is not touched."""

    def __init__(self, model: nn.Module, before: Callable[[int], None]) -> None:
        super().__init__()
        self.model = model
        self.before = before
        self.training = False  # this wrapper only: the shared model stays as it is

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.before(x.shape[0])
        return self.model(x)


def scored_images(n_steps: int, pixels: int) -> int:
    """The forwards of one map's metrics, in images: insertion and deletion (both ends,
    then one image per curve per step that changes some but not all pixels) and Average
    Drop (the photo and the masked photo)."""
    per_step = math.ceil(pixels / n_steps)
    interior = sum(1 for k in range(1, n_steps + 1) if k * per_step < pixels)
    return 2 + 2 * interior + 2


class Scoring:
    """Called before each forward of one map's metrics with its image count: the chunk
    (:class:`Chunks`: Stop, the slot to a waiting explanation), then the progress
    report ``scoring <method>: step k of n, about t s left`` (the second half of the
    bar; ``clock`` counts images over all the maps of the run)."""

    def __init__(
        self, chunks: Chunks, clock: Clock, report: Progress, method: str, n_steps: int
    ) -> None:
        self.chunks, self.clock, self.report = chunks, clock, report
        self.label, self.n_steps = method_label(method), n_steps
        self.first = clock.done

    def __call__(self, images: int) -> None:
        self.chunks()
        # the first two images are the ends of the curves, then two per step
        step = min(self.n_steps, max(0, self.clock.done - self.first - 2) // 2)
        what = f"scoring {self.label}: step {step} of {self.n_steps}{self.clock.eta_text()}"
        self.report(0.5 + 0.5 * self.clock.fraction, what)
        self.clock.done += images


class Session:
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

    def method_maps(
        self,
        explanation: Explanation,
        methods: Sequence[str],
        progress: Progress | None = None,
        stop: StopFlag | None = None,
    ) -> Iterator[dict[str, MethodMap]]:
        """The maps of ``methods`` for an explained photo, as they become ready.

        Yields the growing dict of finished maps: first everything cached (T-Grad is the
        explanation's own saliency: switching tabs recomputes nothing), then the
        single-pass methods from one shared capture pass, then each other method alone,
        the quick ones first (:func:`forwards`). Every computation takes one of the
        process-wide slots, and gives it to a waiting explanation between its chunks;
        ``stop`` set by another thread makes the running method give up at its next
        chunk (:class:`Stopped`).
        """
        from tgrad.methods import METHODS  # the Compare tab's engine, imported on use

        report = reporter(progress)
        done: dict[str, MethodMap] = {}
        for method in methods:
            cached = _tgrad_map(explanation) if method == "tgrad" else None
            cached = cached or self.maps.get(_map_key(explanation, method))
            if cached is not None:
                done[method] = cached
        yield dict(done)
        missing = [m for m in methods if m not in done]
        single = [m for m in missing if METHODS[m].single_pass]
        slow = sorted((m for m in missing if not METHODS[m].single_pass), key=forwards)
        groups = ([single] if single else []) + [[m] for m in slow]
        try:
            for number, group in enumerate(groups):
                names = ", ".join(group)

                def step(fraction: float, number: int = number, names: str = names) -> None:
                    check_stop(stop)
                    report((number + fraction) / len(groups), f"computing {names}")

                step(0.0)
                for found in self._compute_maps(explanation, group, step):
                    self.maps.put(_map_key(explanation, found.method), found)
                    done[found.method] = found
                yield dict(done)
        finally:
            if groups:
                allocator.trim()
        report(1.0, "done")

    def method_scores(
        self,
        explanation: Explanation,
        methods: Sequence[str],
        n_steps: int,
        progress: Progress | None = None,
        stop: StopFlag | None = None,
    ) -> Iterator[dict[str, MethodScore]]:
        """The metrics of ``methods``' maps on an explained photo, as they become ready.

        The maps come from :meth:`method_maps` (cached ones are reused); then each map is
        scored in one of the process-wide slots: insertion and deletion at ``n_steps``
        steps with the blur substrate, Average Drop and Increase, all for the explained
        class. Progress says the method, the step and the time left; between two chunks
        of perturbed images the slot goes to a waiting explanation, and ``stop`` ends
        the run (:class:`Stopped`). Yields the growing dict of finished scores.
        """
        from tgrad.metrics import average_drop_increase, insertion_deletion

        report = reporter(progress)

        def maps_progress(fraction: float, what: str) -> None:
            report(0.5 * fraction, what)

        maps = deque(self.method_maps(explanation, methods, maps_progress, stop), maxlen=1)[0]
        done: dict[str, MethodScore] = {}
        for method in methods:
            cached = self.scores.get(_score_key(explanation, method, n_steps))
            if cached is not None:
                done[method] = cached
        yield dict(done)
        missing = [m for m in methods if m not in done]
        if not missing:
            report(1.0, "done")
            return
        module = self.models.get(explanation.model).loaded.module
        pixels = explanation.x.shape[-2] * explanation.x.shape[-1]
        per_map = scored_images(n_steps, pixels)
        clock = Clock(per_map * len(missing))
        target = torch.tensor([explanation.target])
        try:
            for method in missing:
                saliency = maps[method].map[None].to(explanation.x.device)
                with self.work.hold(SLOW) as slot:
                    start = time.perf_counter()
                    chunks = Chunks(slot, stop)
                    model = _Observed(module, Scoring(chunks, clock, report, method, n_steps))
                    curves = insertion_deletion(model, explanation.x, saliency, target, n_steps)
                    drop = average_drop_increase(model, explanation.x, saliency, target)
                    seconds = time.perf_counter() - start - chunks.paused
                score = MethodScore(
                    method,
                    n_steps,
                    curves.fractions.cpu(),
                    curves.insertion[0].cpu(),
                    curves.deletion[0].cpu(),
                    float(curves.insertion_auc[0]),
                    float(curves.deletion_auc[0]),
                    float(drop.average_drop),
                    float(drop.increase),
                    seconds,
                )
                self.scores.put(_score_key(explanation, method, n_steps), score)
                done[method] = score
                yield dict(done)
        finally:
            allocator.trim()
        report(1.0, "done")

    def sanity(
        self,
        explanation: Explanation,
        methods: Sequence[str],
        progress: Progress | None = None,
        stop: StopFlag | None = None,
    ) -> Iterator[SanityRun]:
        """Cascading randomization of the explanation's model (SPEC 5), step by step.

        Yields the run after each step. The cascade works on its own copy of the model
        (the shared one is never touched) and takes a process-wide slot for one step at a
        time, so other users' explanations interleave with a long cascade; inside a
        step the slow methods' chunks hand the slot to a waiting explanation too.
        ``stop`` set by another thread ends it at the next chunk or step
        (:class:`Stopped`). A finished run is cached.
        """
        from tgrad.sanity import cascade, randomization_groups

        key = sanity_key(explanation, methods)
        cached = self.sanity_runs.get(key)
        if cached is not None:
            yield cached
            return
        report = reporter(progress)
        model = self.models.get(explanation.model).loaded.module
        groups = randomization_groups(model)
        names = tuple(group_title(explanation.labels, g.name, g.modules) for g in groups)
        run = SanityRun(tuple(methods), groups=len(groups), names=names)
        target = torch.tensor([explanation.target])
        between: list[Chunks] = []  # the running step's

        def chunk(method: str, done: int, total: int) -> None:
            between[-1]()
            number = len(run.steps)
            fraction = (number + done / max(total, 1)) / (run.groups + 1)
            report(fraction, f"randomizing: step {number} of {run.groups}, {method}")

        steps = cascade(
            model,
            explanation.x,
            target,
            tuple(methods),
            seed=SANITY_SEED,
            options=self._method_options(explanation, methods),
            progress=chunk,
        )
        try:
            for number in range(run.groups + 1):
                check_stop(stop)
                group = "the original model" if number == 0 else f"group {number} of {run.groups}"
                report(number / (run.groups + 1), f"randomizing: {group}")
                with self.work.hold(SLOW) as slot:
                    between[:] = [Chunks(slot, stop)]
                    step = next(steps)
                run.steps.append(_sanity_step(step))
                yield run
        finally:
            steps.close()
            allocator.trim()
        self.sanity_runs.put(key, run)
        report(1.0, "done")

    @staticmethod
    def _method_options(explanation: Explanation, methods: Sequence[str]) -> dict:
        """The explorer's options for the slow methods: the engine's options for the
        model's preprocessing (:func:`tgrad.methods.preprocessing_options`: Integrated
        Gradients' named black baseline) and chunks of :data:`STOP_CHUNK` images (Stop
        answers within one)."""
        from tgrad.methods import preprocessing_options

        options = {m: dict(o) for m, o in preprocessing_options(explanation.preprocessing).items()}
        for method in ("integrated_gradients", "smoothgrad", "scorecam"):
            options.setdefault(method, {})["batch_size"] = STOP_CHUNK
        return {m: options[m] for m in methods if m in options}

    def _compute_maps(
        self, explanation: Explanation, methods: Sequence[str], step: Callable[[float], None]
    ) -> list[MethodMap]:
        """Run ``methods`` together on the explanation's input, in one slot; ``step`` is
        called with the fraction done between chunks (it raises :class:`Stopped`)."""
        from tgrad.methods import explain as explain_methods

        entry = self.models.get(explanation.model)
        with self.work.hold(SLOW) as slot:
            chunks = Chunks(slot, None)

            def progress(method: str, done: int, total: int) -> None:
                chunks()  # an explanation waiting goes first
                step(done / max(total, 1))  # then Stop, and the report

            start = time.perf_counter()
            maps = explain_methods(
                entry.loaded.module,
                explanation.x,
                target=explanation.target,
                methods=tuple(methods),
                options=self._method_options(explanation, methods),
                progress=progress,
            )
            seconds = time.perf_counter() - start - chunks.paused
        layers = getattr(maps, "layers", {})
        deltas = getattr(maps, "convergence_delta", {})
        return [
            MethodMap(
                name,
                maps[name][0].detach().cpu(),
                seconds,
                len(methods),
                layers.get(name),
                float(deltas[name][0]) if name in deltas else None,
            )
            for name in methods
        ]


def group_title(labels: Sequence[LayerLabel], name: str, modules: Sequence[str]) -> str:
    """A readable name for a randomization group (SPEC 5), from the readable names of the
    terms its modules add: what those titles share (``"Block 16"``), or a lone term's
    title without its grid size (``"Head · 1x1 conv"``); ``name`` when no term is
    added by the group."""

    def inside(path: str) -> bool:
        return any(path == m or path.startswith(m + ".") for m in modules)

    titles = [label.title.split(" · ") for label in labels if inside(label.path)]
    if not titles:
        return name
    if len(titles) == 1:
        parts = titles[0]
        return " · ".join(parts[:-1] if len(parts) > 1 and " x " in parts[-1] else parts)
    shared = []
    for words in zip(*titles, strict=False):
        if len(set(words)) > 1:
            break
        shared.append(words[0])
    return " · ".join(shared) or name


def sanity_key(explanation: Explanation, methods: Sequence[str]) -> str:
    """The cache key of a cascade: the explanation, the methods and the seed."""
    return f"{explanation.key}:{','.join(methods)}:{SANITY_SEED}"


def _sanity_step(step: Any) -> SanityStep:
    """What the Sanity tab keeps of a :class:`tgrad.sanity.Step` (sample 0, small maps)."""
    size = (SANITY_MAP_SIZE, SANITY_MAP_SIZE)
    return SanityStep(
        step.group,
        {m: upsample(value[:1].float(), size)[0].cpu() for m, value in step.maps.items()},
        {
            m: {k: float(v[0]) for k, v in measures.items()}
            for m, measures in step.similarity.items()
        },
        step.seconds,
    )


def _score_key(explanation: Explanation, method: str, n_steps: int) -> str:
    return f"{explanation.key}:{method}:{n_steps}"


def _map_key(explanation: Explanation, method: str) -> str:
    return f"{explanation.key}:{method}"


def _tgrad_map(explanation: Explanation) -> MethodMap:
    return MethodMap("tgrad", explanation.result.saliency[0], explanation.seconds)


def set_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads for the server (default: ``EXPLORER_TORCH_THREADS`` or 1).

    One thread per explanation, with up to two explanations running at once, uses both
    cores of a small Space without oversubscribing them. With OpenMP's two threads per
    call, any other load on the machine made an explanation take 5 to 8 s instead of
    0.2 s (threads spin at every barrier waiting for a descheduled partner). Returns
    the number set.
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
