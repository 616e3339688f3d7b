"""The work of the method tabs on an explained photo: the maps of the Compare tab, their
scores for the Evaluate tab, and the Sanity tab's cascade. Each runs in the process-wide
slots (:class:`~explorer.jobs.WorkSlots`), hands its slot to a waiting explanation between
chunks, and stops at the next chunk once its Stop token is set. :class:`MethodWork` is
the part of :class:`~explorer.session.Session` that does it; nothing here imports Gradio.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from explorer import allocator
from explorer.cache import LRU, ModelCache
from explorer.explanation import (
    SANITY_MAP_SIZE,
    SANITY_SEED,
    Explanation,
    MethodMap,
    MethodScore,
    SanityRun,
    SanityStep,
    group_title,
    map_key,
    method_label,
    sanity_key,
    score_key,
)
from explorer.jobs import SLOW, Chunks, Clock, Progress, StopFlag, WorkSlots, check_stop, reporter
from tgrad.tgrad import upsample

STOP_CHUNK = 8
"""Images per forward for the slow methods: the most work done after Stop is pressed."""


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


class MethodWork:
    """Maps, scores and cascades of the method tabs, cached (the part of the session that
    runs them; it holds the caches and the slots it uses)."""

    models: ModelCache
    maps: LRU[str, MethodMap]
    scores: LRU[str, MethodScore]
    sanity_runs: LRU[str, SanityRun]
    work: WorkSlots

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
            cached = cached or self.maps.get(map_key(explanation, method))
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
                    self.maps.put(map_key(explanation, found.method), found)
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
            cached = self.scores.get(score_key(explanation, method, n_steps))
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
                self.scores.put(score_key(explanation, method, n_steps), score)
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


def _tgrad_map(explanation: Explanation) -> MethodMap:
    return MethodMap("tgrad", explanation.result.saliency[0], explanation.seconds)
