"""T-Grad and the baselines of SPEC 3 behind one entry point.

>>> from tgrad.methods import METHODS, explain
>>> maps = explain(model, x, target=None, methods=("tgrad", "gradcam"), options=None)
>>> maps["gradcam"]          # raw map [B,H,W] at the input's size, on x's device
>>> maps.layers["gradcam"]   # the CAM layer it used, e.g. "features"

``options`` maps a method name to its options (unknown names are refused); the defaults
are in ``METHODS[name].options``. Integrated Gradients' default baseline is a black
image, made with the model's preprocessing: pass ``options=preprocessing_options(
loaded.preprocessing)`` (or name another baseline) when it is asked for.

Each method declares once what it needs of the one shared capture pass
(``METHODS[name].needs``, a :class:`~tgrad.methods.base.Pass`: forward only, the shared
backward, gradients kept, or its own pass). Every method computed from the shared pass
alone (``METHODS[name].single_pass``) costs no pass of its own, however many are asked
for; the backward runs only when one of them needs it. ScoreCAM, Integrated Gradients,
SmoothGrad and Guided Backprop then run their own passes (the first three chunked,
reporting progress through ``progress(method, done, total)``).
``maps.convergence_delta["integrated_gradients"]`` is IG's
``sum(attribution) - (y(x) - y(baseline))`` per sample.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import Tensor, nn

from tgrad.capture import Target
from tgrad.methods.base import Method, Pass, Progress, Setup, shared_pass
from tgrad.methods.bias import FullGrad, TGradMethod
from tgrad.methods.cam import CAM, EigenCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM
from tgrad.methods.controls import CONTROL, EdgeMap, RandomMap
from tgrad.methods.gradient import (
    InputGradient,
    InputXGradient,
    IntegratedGradients,
    SmoothGrad,
)
from tgrad.methods.guided import GuidedBackprop


@dataclass(frozen=True)
class MethodInfo:
    """What the registry says about a method."""

    name: str
    family: str
    """``"bias"``, ``"cam"``, ``"gradient"``, or ``"control"`` (tgrad.methods.controls)."""
    needs: Pass
    """What it needs of the shared pass (the one place that says it)."""
    description: str
    """One line for a user interface."""
    options: Mapping[str, Any]
    """Its options with their defaults (read-only)."""
    build: Callable[[Setup, dict], Method] = field(repr=False)

    @property
    def single_pass(self) -> bool:
        """Computed from the shared pass alone (no forwards of its own)."""
        return self.needs.single


_CAM_LAYER = {"layer": None}  # None: SPEC 3's rule (tgrad.methods.cam.default_layer)


def _info(name, family, needs, description, build, **options) -> MethodInfo:
    return MethodInfo(name, family, needs, description, MappingProxyType(options), build)


METHODS: Mapping[str, MethodInfo] = MappingProxyType(
    {
        m.name: m
        for m in (
            _info(
                "tgrad",
                "bias",
                Pass.GRADIENTS,
                "T-Grad: the logit's input and bias terms, layer maps weighted by their share",
                TGradMethod,
                strict=True,
            ),
            _info(
                "gradcam",
                "cam",
                Pass.GRADIENTS,
                "GradCAM: last conv activations weighted by their mean gradient",
                CAM,
                **_CAM_LAYER,
            ),
            _info(
                "gradcam++",
                "cam",
                Pass.GRADIENTS,
                "GradCAM++: channel weights from positive gradients, 2nd/3rd-order terms",
                GradCAMPlusPlus,
                **_CAM_LAYER,
            ),
            _info(
                "xgradcam",
                "cam",
                Pass.GRADIENTS,
                "XGradCAM: gradients weighted by the normalised activations",
                XGradCAM,
                **_CAM_LAYER,
            ),
            _info(
                "eigencam",
                "cam",
                Pass.FORWARD,
                "EigenCAM: first principal component of the activations (no gradient), "
                "its sign corrected so the largest magnitude is positive",
                EigenCAM,
                **_CAM_LAYER,
            ),
            _info(
                "scorecam",
                "cam",
                Pass.OWN,
                "ScoreCAM: channels weighted by the class score of the image masked by each",
                ScoreCAM,
                **_CAM_LAYER,
                batch_size=16,
            ),
            _info(
                "fullgrad",
                "bias",
                Pass.GRADIENTS,
                "FullGrad: input x gradient plus every layer's bias x gradient, normalised",
                FullGrad,
            ),
            _info(
                "vanilla",
                "gradient",
                Pass.BACKWARD,
                "Vanilla gradient: how the logit changes with each pixel",
                InputGradient,
            ),
            _info(
                "input_x_gradient",
                "gradient",
                Pass.BACKWARD,
                "Input x Gradient: each pixel times its gradient",
                InputXGradient,
            ),
            _info(
                "integrated_gradients",
                "gradient",
                Pass.OWN,
                "Integrated Gradients: gradients along the straight path from a baseline "
                "(a black image unless named), trapezoid rule",
                IntegratedGradients,
                baseline="black",
                preprocessing=None,
                steps=50,
                batch_size=32,
            ),
            _info(
                "smoothgrad",
                "gradient",
                Pass.OWN,
                "SmoothGrad: gradients averaged over noisy copies of the image",
                SmoothGrad,
                samples=50,
                noise_level=0.15,
                sigma=None,
                seed=0,
                batch_size=32,
            ),
            _info(
                "guided_backprop",
                "gradient",
                Pass.OWN,
                "Guided Backprop: the gradient with only positive gradients passed back "
                "through every rectifier",
                GuidedBackprop,
            ),
            _info(
                "random",
                CONTROL,
                Pass.FORWARD,
                "Random (control): a seeded uniform map, the floor every method should beat",
                RandomMap,
                seed=0,
            ),
            _info(
                "edge",
                CONTROL,
                Pass.FORWARD,
                "Edge detector (control): the photo's Sobel edges, blind to the model",
                EdgeMap,
            ),
        )
    }
)


class Maps(dict[str, Tensor]):
    """``explain``'s answer: method name -> raw map [B,H,W], plus how each was made."""

    layers: dict[str, str]
    """The target layer of each CAM method."""
    seconds: dict[str, float]
    """Each method's own time after the shared pass (wall clock, device work included
    only where the method waited for it)."""
    pass_seconds: float
    """The shared forward + backward."""
    target: Tensor
    """The explained class of each sample [B]."""
    logits: Tensor
    """The model's logits on x [B,K]."""
    convergence_delta: dict[str, Tensor]
    """Per method that integrates along a path (Integrated Gradients): ``sum(attribution)
    - (y(x) - y(baseline))`` per sample [B], in logit units, before the channel reduction
    (SPEC 3; 0 for a linear model, shrinking as the number of steps grows)."""


def resolve_methods(methods: str | Iterable[str]) -> tuple[str, ...]:
    """Method names from one name, ``"all"``, or several names (order kept)."""
    names = (
        tuple(METHODS)
        if methods == "all"
        else ((methods,) if isinstance(methods, str) else tuple(methods))
    )
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(
            f"unknown method(s) {unknown or '(none)'}; valid: {', '.join(METHODS)} or 'all'"
        )
    return tuple(dict.fromkeys(names))


def _options(name: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    defaults = METHODS[name].options
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"{name} has no option(s) {unknown}; its options: {sorted(defaults) or 'none'}"
        )
    return {**defaults, **given}


def explain(
    model: nn.Module,
    x: Tensor,
    target: Target = None,
    methods: str | Iterable[str] = ("tgrad", "gradcam"),
    options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Progress | None = None,
) -> Maps:
    """Explain the target logit of each sample with several methods at once.

    Args:
        model: a classifier in eval mode returning logits [B,K].
        x: input [B,C,H,W], normalised as the model expects.
        target: the explained class (None: top-1 of each sample; int; one per sample).
        methods: names from :data:`METHODS`, one name, or ``"all"``.
        options: method name -> its options (see ``METHODS[name].options``).
        progress: ``progress(method, done, total)`` from the methods with many forwards.

    Returns:
        :class:`Maps`: method name -> raw (not normalised) map [B,H,W] on x's device.
        The model is left as it was and no hook survives, also when a method raises.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be a batch [B,C,H,W], got shape {tuple(x.shape)}")
    names = resolve_methods(methods)
    options = dict(options or {})
    stray = sorted(set(options) - set(METHODS))
    if stray:  # options of known methods not asked for are ignored
        raise ValueError(f"options given for unknown method(s): {stray}")
    setup = Setup(model, x, names, progress)
    built = {n: METHODS[n].build(setup, _options(n, options.get(n))) for n in names}
    start = time.perf_counter()
    record = shared_pass(model, x, target, ((m, METHODS[n].needs) for n, m in built.items()))
    maps = Maps()
    maps.pass_seconds = time.perf_counter() - start
    maps.layers = {n: m.layer for n, m in built.items() if isinstance(m, CAM)}
    maps.seconds = {}
    maps.target, maps.logits = record.target, record.logits
    maps.convergence_delta = {}
    for name, method in built.items():
        start = time.perf_counter()
        maps[name] = method.attribute(record)
        maps.seconds[name] = time.perf_counter() - start
        delta = getattr(method, "convergence_delta", None)
        if delta is not None:
            maps.convergence_delta[name] = delta
    return maps


def preprocessing_options(preprocessing: Any) -> dict[str, dict[str, Any]]:
    """The options of every method that needs the model's preprocessing, for ``explain``'s
    ``options``: Integrated Gradients' default baseline is a black image (pixel value 0,
    then normalised), so it needs ``preprocessing`` (a :class:`tgrad.models.Preprocessing`)
    to make it. Options of methods not asked for are ignored, so this can always be passed.
    """
    return {"integrated_gradients": {"preprocessing": preprocessing}}


__all__ = [
    "METHODS",
    "Maps",
    "MethodInfo",
    "Pass",
    "explain",
    "preprocessing_options",
    "resolve_methods",
]
