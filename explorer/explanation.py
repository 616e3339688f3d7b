"""One explained photo and how it is found again: the :class:`Explanation` the views draw
from, its cache key (the file's hash, the model, the class), the class a user asks for,
and what the method tabs keep of their runs (maps, scores, cascade steps) with their
keys. Nothing here imports Gradio."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from explorer.kept import KeptResult
from tgrad.decompose import Term
from tgrad.labels import find_class, top_k
from tgrad.layers import LayerLabel
from tgrad.preprocessing import Preprocessing
from tgrad.viz import to_uint8_image, total_size

TOP1 = "top-1 (predicted)"
"""The target picker's first choice: explain whatever the model predicts."""

SANITY_MAP_SIZE = 112
"""Side of the maps a cascade keeps: the grid shows many small panels."""
SANITY_SEED = 0
MAX_KEY_LENGTH = 200
"""The longest cache key (a 32-digit hash, a model name, a class index)."""
MAX_TARGET_TEXT = 120
"""The longest class text accepted from a user (the longest ImageNet name has 86)."""


def method_label(method: str) -> str:
    """The name a method goes by on the page, e.g. ``"Integrated Gradients"``."""
    from tgrad.methods import METHODS

    return METHODS[method].description.partition(":")[0]  # "GradCAM: ..." -> "GradCAM"


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


def score_key(explanation: Explanation, method: str, n_steps: int) -> str:
    return f"{explanation.key}:{method}:{n_steps}"


def map_key(explanation: Explanation, method: str) -> str:
    return f"{explanation.key}:{method}"
