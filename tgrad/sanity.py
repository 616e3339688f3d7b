"""The sanity check of SPEC 5: cascading randomization (Adebayo et al. 2018).

An explanation that explains the model must change when the model's weights are replaced
by random ones. :func:`cascade` re-initialises the model's parametrised layers group by
group, from the output towards the input, and after each group compares every method's
map with the map of the original model.

>>> for step in cascade(model, x, methods=("tgrad", "guided_backprop")):
...     step.group, step.similarity["tgrad"]["spearman_abs"]     # name, [B]

**Groups** (:func:`randomization_groups`). A *layer* is a ``Conv*d`` or ``Linear`` module
together with the ``BatchNorm*d`` modules that follow it before the next one (in module
order). A model with at most :data:`MAX_LAYER_GROUPS` (20) layers gets one group per
layer: VGG-16 has 13 conv + 3 linear = 16 groups, as in the paper's Fig. 6. A larger
model gets one group per *top-level block*: the children of the model that hold
parametrised layers, where a plain container (``nn.Sequential``, ``nn.ModuleList``,
``nn.ModuleDict``) of composite modules is opened and its elements taken as blocks, and a
block made of a BatchNorm alone joins the block before it. So EfficientNet-Lite0 has 19
groups: the stem ``_conv_stem+_bn0``, each of the 16 MBConv blocks ``_blocks.k``, the head
``_conv_head+_bn1`` and the classifier ``_fc``; a torchvision ResNet has the stem
``conv1+bn1``, each BasicBlock/Bottleneck ``layerN.k`` and ``fc``; MobileNetV2 has the 19
elements of ``features`` and ``classifier``. The first step randomizes the group nearest
the output.

**Re-initialisation**: each ``Conv*d``, ``Linear`` and ``BatchNorm*d`` module of the group
runs its own ``reset_parameters()`` (for BatchNorm this also resets the running
statistics: mean 0, variance 1), with the global torch RNG seeded to ``seed * 1000 + k``
for group ``k`` (1 = nearest the output) inside :func:`torch.random.fork_rng`, so the
caller's RNG state is left as it was. A group therefore gets the same random weights in
both modes, and another seed gives other weights. Other parameters (none in the supported
models) are left as they are. Seeding the global RNG is process-wide: the runs of this
module take a lock, but another thread drawing from the global RNG at the same moment
would change the weights drawn (the engine's own stochastic methods use their own
generators).

**The model is never changed.** The cascade runs on one deep copy of the model, made
when the first step is asked for; each step re-initialises only its newly randomized group
in that copy (``mode="cascading"``: groups ``1..k`` random at step ``k``). With
``mode="independent"`` group ``k`` alone is random at step ``k``: the group randomized at
the step before is restored from a copy of its state first.

**Target**: the class explained at every step is the one of step 0 (the original model's
top-1, or the ``target`` given), so the maps keep answering the same question; with
``rederive_target=True`` each step explains its own model's top-1 class instead.

**Similarity** (:data:`MEASURES`, per sample, to the map of step 0): Spearman of the
absolute values and of the values, SSIM and HOG Spearman, defined in
:mod:`tgrad.similarity`.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from tgrad.capture import Target
from tgrad.methods import explain, resolve_methods
from tgrad.methods.base import Progress
from tgrad.similarity import (
    HOG_CELL,
    MEASURES,
    hog_features,
    hog_spearman,
    similarity,
    spearman,
    ssim,
    unit_scale,
)

MAX_LAYER_GROUPS = 20
"""Up to this many layers a group is one layer; above it, one top-level block."""

PARAMETRISED: tuple[type[nn.Module], ...] = (_ConvNd, nn.Linear, _BatchNorm)
"""The modules re-initialised (SPEC 5: Conv2d, Linear, BatchNorm2d, in any dimension)."""

Mode = Literal["cascading", "independent"]
MODES: tuple[str, ...] = ("cascading", "independent")

_seed_lock = threading.Lock()  # one seeded re-initialisation at a time in this process


@dataclass(frozen=True)
class Group:
    """A set of modules randomized together, by their qualified names in the model."""

    name: str
    """E.g. ``"features.28"``, ``"_blocks.15"``, ``"conv1+bn1"``."""
    modules: tuple[str, ...]


@dataclass
class Step:
    """One step of the cascade: the maps of a (partly) randomized model.

    Step 0 is the original model (``group == "original"``, similarity 1 by definition).
    """

    index: int
    """0 for the original model, k for the k-th group (1 = nearest the output)."""
    group: str
    """The name of the group randomized at this step (``"original"`` at step 0)."""
    randomized: tuple[str, ...]
    """The groups random at this step: ``1..k`` in cascading mode, ``k`` alone in
    independent mode."""
    maps: dict[str, Tensor]
    """Method name -> raw map [B,H,W] on the input's device."""
    similarity: dict[str, dict[str, Tensor]]
    """Method name -> measure (:data:`MEASURES`) -> similarity to step 0's map, float64
    [B] on the CPU."""
    target: Tensor
    """The class explained at this step [B]."""
    prediction: Tensor
    """This step's model's top-1 class [B] (it drifts as the model is randomized)."""
    seconds: float
    """Wall time of the step: randomization, explanation and similarity."""


# ---------------------------------------------------------------- groups


def _layer_groups(model: nn.Module) -> list[Group]:
    """One group per Conv/Linear layer, with the BatchNorms that follow it (input first)."""
    groups: list[list[str]] = []
    for name, module in model.named_modules():
        if isinstance(module, (_ConvNd, nn.Linear)):
            groups.append([name])
        elif isinstance(module, _BatchNorm):
            if groups:
                groups[-1].append(name)
            else:
                groups.append([name])
    return [Group(members[0], tuple(members)) for members in groups]


def _parametrised(module: nn.Module) -> bool:
    return any(isinstance(m, PARAMETRISED) for m in module.modules())


def _is_open_container(module: nn.Module) -> bool:
    """A plain container of composite modules (its elements are the blocks)."""
    return isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and any(
        next(child.children(), None) is not None for child in module.children()
    )


def _blocks(module: nn.Module, prefix: str = "") -> list[str]:
    names: list[str] = []
    for name, child in module.named_children():
        if not _parametrised(child):
            continue
        if _is_open_container(child):
            names += _blocks(child, f"{prefix}{name}.")
        else:
            names.append(f"{prefix}{name}")
    return names


def _block_groups(model: nn.Module) -> list[Group]:
    """One group per top-level block; a lone BatchNorm joins the block before it."""
    modules = dict(model.named_modules())
    groups: list[list[str]] = []
    for name in _blocks(model):
        if isinstance(modules[name], _BatchNorm) and groups:
            groups[-1].append(name)
        else:
            groups.append([name])
    return [Group("+".join(members), tuple(members)) for members in groups]


def randomization_groups(model: nn.Module) -> list[Group]:
    """The groups of SPEC 5 in randomization order: from the output towards the input.

    One group per layer for a model of at most :data:`MAX_LAYER_GROUPS` layers, else one
    per top-level block (see the module docstring).
    """
    layers = _layer_groups(model)
    groups = layers if len(layers) <= MAX_LAYER_GROUPS else _block_groups(model)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no Conv, Linear or BatchNorm layer")
    return groups[::-1]


def randomize(modules: Iterable[nn.Module], seed: int) -> None:
    """Re-initialise every parametrised module inside ``modules``, in place, seeded.

    Each ``Conv*d``, ``Linear``, ``BatchNorm*d`` runs its ``reset_parameters()`` (BatchNorm:
    running statistics too) with the global RNG seeded to ``seed`` in a forked RNG state.
    """
    targets = [m for module in modules for m in module.modules() if isinstance(m, PARAMETRISED)]
    cuda = sorted(
        {p.device.index or 0 for m in targets for p in m.parameters() if p.device.type == "cuda"}
    )
    with _seed_lock, torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for m in targets:
            m.reset_parameters()


# ---------------------------------------------------------------- the cascade


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def cascade(
    model: nn.Module,
    x: Tensor,
    target: Target = None,
    methods: str | Iterable[str] = ("tgrad",),
    seed: int = 0,
    mode: Mode = "cascading",
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    rederive_target: bool = False,
    groups: Sequence[Group] | None = None,
    progress: Progress | None = None,
) -> Iterator[Step]:
    """Cascading randomization, one :class:`Step` at a time (SPEC 5).

    Args:
        model: a classifier in eval mode returning logits [B,K]; never changed (the
            cascade randomizes a deep copy).
        x: input [B,C,H,W], normalised as the model expects.
        target: the class to explain (None: the original model's top-1 of each sample).
        methods: names from :data:`tgrad.methods.METHODS`, one name, or ``"all"``.
        seed: seeds the random weights (group k: ``seed * 1000 + k``).
        mode: ``"cascading"`` (groups 1..k random at step k) or ``"independent"``
            (group k alone).
        options: per-method options, as for :func:`tgrad.methods.explain`; Integrated
            Gradients' default black baseline needs
            ``tgrad.methods.preprocessing_options(loaded.preprocessing)``.
        rederive_target: explain each step's own top-1 class instead of step 0's target.
        groups: the groups in randomization order (default :func:`randomization_groups`),
            by module names of ``model``.
        progress: passed to :func:`tgrad.methods.explain` at every step.

    Yields:
        Step 0 (the original model), then one step per group. The work of a step is done
        when it is asked for, so a caller may stop early.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    names = resolve_methods(methods)
    return _run(model, x, target, names, seed, mode, options, rederive_target, groups, progress)


def _run(
    model: nn.Module,
    x: Tensor,
    target: Target,
    names: tuple[str, ...],
    seed: int,
    mode: str,
    options: Mapping[str, Mapping[str, Any]] | None,
    rederive_target: bool,
    groups: Sequence[Group] | None,
    progress: Progress | None,
) -> Iterator[Step]:
    start = time.perf_counter()
    groups = list(randomization_groups(model) if groups is None else groups)
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    missing = sorted({n for g in groups for n in g.modules if n not in modules})
    if missing:
        raise ValueError(f"the model has no module(s) {missing}")
    original = explain(work, x, target, names, options, progress)
    fixed = original.target
    ones = torch.ones(x.shape[0], dtype=torch.float64)
    yield Step(
        0,
        "original",
        (),
        dict(original),
        {n: {m: ones.clone() for m in MEASURES} for n in names},
        fixed,
        original.logits.argmax(1),
        time.perf_counter() - start,
    )
    saved: tuple[list[nn.Module], list[dict[str, Tensor]]] | None = None
    for k, group in enumerate(groups, 1):
        start = time.perf_counter()
        members = [modules[n] for n in group.modules]
        if mode == "independent":
            if saved is not None:  # the previous group returns to its original weights
                for module, state in zip(*saved, strict=True):
                    module.load_state_dict(state)
            saved = (members, [_state(m) for m in members])
        randomize(members, seed * 1000 + k)
        maps = explain(work, x, None if rederive_target else fixed, names, options, progress)
        randomized = (group.name,) if mode == "independent" else tuple(g.name for g in groups[:k])
        yield Step(
            k,
            group.name,
            randomized,
            dict(maps),
            {n: similarity(original[n], maps[n]) for n in names},
            maps.target,
            maps.logits.argmax(1),
            time.perf_counter() - start,
        )


__all__ = [
    "HOG_CELL",
    "MAX_LAYER_GROUPS",
    "MEASURES",
    "MODES",
    "PARAMETRISED",
    "Group",
    "Step",
    "cascade",
    "hog_features",
    "hog_spearman",
    "randomization_groups",
    "randomize",
    "similarity",
    "spearman",
    "ssim",
    "unit_scale",
]
