"""The bias family: T-Grad (SPEC 2) and FullGrad (SPEC 3), both functions of the terms of
the decomposition (SPEC 1). One :class:`~tgrad.decompose.TermCollector` serves both in a
shared pass; when FullGrad is asked for, it also reduces each term to FullGrad's map as the
term's gradient arrives (no element-wise contribution is kept).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tgrad.capture import Keep, OnGrad, OnOp, OnUnseen, Record
from tgrad.decompose import Decomposition, Term, TermCollector, check_decomposable, check_gap
from tgrad.methods.base import Setup, input_size
from tgrad.tgrad import aggregate


class SharedTerms:
    """One term collector for the bias-family methods of a call; terms made once.

    With ``fullgrad``, each spatial term is also reduced to FullGrad's post-processed map
    as it arrives (:class:`FullGradMaps`), so no element-wise contribution is kept.
    """

    def __init__(self, fullgrad: bool) -> None:
        self.fullgrad = FullGradMaps() if fullgrad else None
        self.collector = TermCollector(on_term=self.fullgrad, strict=False)
        self._terms: tuple[Term, ...] | None = None

    @classmethod
    def of(cls, setup: Setup) -> SharedTerms:
        if "terms" not in setup.shared:
            setup.shared["terms"] = cls("fullgrad" in setup.names)
        return setup.shared["terms"]

    def terms(self, record: Record) -> tuple[Term, ...]:
        if self._terms is None:
            self._terms = self.collector.finish(record)
        return self._terms


class BiasMethod:
    """Shows every operation of the pass to the shared collector (no module watched)."""

    def __init__(self, setup: Setup, options: dict) -> None:
        self.shared = SharedTerms.of(setup)
        if options.get("strict"):  # T-Grad's: refuse what cannot be decomposed exactly
            self.shared.collector.strict = True
        self.options = options

    def watch(self, model: nn.Module) -> dict[nn.Module, Keep | None]:
        return {}

    def on_grad(self) -> OnGrad | None:
        return None

    def on_op(self) -> tuple[OnOp, OnUnseen]:
        return self.shared.collector.on_op, self.shared.collector.on_unseen


class TGradMethod(BiasMethod):
    """T-Grad, formula 8: ``sum_t phi(S_t) * score_t`` (the same map as
    :class:`tgrad.tgrad.TGrad`). Option ``strict`` (True): refuse a model that does not
    decompose exactly, and a result whose completeness gap is above tolerance."""

    def __init__(self, setup: Setup, options: dict) -> None:
        super().__init__(setup, options)
        if options["strict"]:
            check_decomposable(setup.model)

    def attribute(self, record: Record) -> Tensor:
        terms = self.shared.terms(record)
        if self.options["strict"]:
            check_gap(Decomposition(record, terms))
        return aggregate(terms, input_size(record))


def fullgrad_postprocess(
    contribution: Tensor, eps: float = 1e-6, out: Tensor | None = None
) -> Tensor:
    """FullGrad's ``postprocess``: abs, min-max per sample over (C,h,w), sum over C.

    ``(|c| - min) / (max - min + eps)`` summed over channels, as the FullGrad authors'
    code does it; [B,C,h,w] -> [B,h,w]. ``out``: a scratch tensor shaped like the
    contribution for ``|c|`` (reused across terms, it spares an allocation per term).
    """
    magnitude = torch.abs(contribution, out=out) if out is not None else contribution.abs()
    flat = magnitude.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)  # on CPU, much faster than aminmax(dim=1)
    channels = magnitude.shape[1]
    scale = (hi - lo + eps)[:, None, None]
    return magnitude.sum(1).sub_(channels * lo[:, None, None]).div_(scale)


class FullGradMaps:
    """The collector's ``on_term`` for FullGrad: each spatial term's C is post-processed
    on arrival (its own min-max) and added to the sum of its grid's maps [B,h,w]; C is
    then free. Upsampling is linear, so summing per grid before it changes nothing."""

    def __init__(self) -> None:
        self.by_grid: dict[tuple[int, int], Tensor] = {}
        self._scratch: Tensor | None = None  # |C| of one term at a time

    def __call__(self, name: str, contribution: Tensor, spatial: bool) -> None:
        if not spatial:
            return
        scratch = self._scratch
        if (
            scratch is None
            or scratch.numel() < contribution.numel()
            or scratch.dtype != contribution.dtype
            or scratch.device != contribution.device
        ):
            scratch = torch.empty(
                contribution.numel(), dtype=contribution.dtype, device=contribution.device
            )
            self._scratch = scratch
        out = scratch[: contribution.numel()].view(contribution.shape)
        part = fullgrad_postprocess(contribution, out=out)
        grid = (part.shape[-2], part.shape[-1])
        total = self.by_grid.get(grid)
        self.by_grid[grid] = part if total is None else total.add_(part)


class FullGrad(BiasMethod):
    """FullGrad (Srinivas & Fleuret 2019): ``postprocess(x * dy/dx)`` plus, for every spatial
    bias term of the decomposition, ``upsample(postprocess(b_t * dy/dz_t))`` (bilinear,
    align_corners=True, as the authors' code; SPEC 3). The bias terms are SPEC 2's layer
    terms: a saturating activation's constants join the term of the layer that feeds it."""

    def attribute(self, record: Record) -> Tensor:
        size = input_size(record)
        self.shared.terms(record)  # the input term is reduced when the terms are finished
        by_grid = self.shared.fullgrad.by_grid
        # upsampling is linear: one per grid size
        return torch.stack([fullgrad_upsample(m, size) for m in by_grid.values()]).sum(0)


def fullgrad_upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """FullGrad's upsampling of maps [B,h,w] to [B,*size]: bilinear with
    align_corners=True, as in the FullGrad authors' code (``F.interpolate(...,
    mode='bilinear', align_corners=True)``); maps already of that size are returned."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
