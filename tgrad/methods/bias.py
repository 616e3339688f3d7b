"""The bias family: T-Grad (SPEC 2) and FullGrad (SPEC 3), both functions of the terms of
the decomposition (SPEC 1). One :class:`~tgrad.decompose.TermCollector` serves both in a
shared pass; it keeps the element-wise contributions only when FullGrad is asked for.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tgrad.capture import Keep, OnGrad, Record
from tgrad.decompose import (
    Decomposition,
    Term,
    TermCollector,
    check_decomposable,
    check_gap,
)
from tgrad.methods.base import Setup, input_size
from tgrad.tgrad import aggregate, upsample


class SharedTerms:
    """One term collector for the bias-family methods of a call; terms made once."""

    def __init__(self, keep_elementwise: bool) -> None:
        self.collector = TermCollector(keep_elementwise)
        self._terms: tuple[Term, ...] | None = None

    @classmethod
    def of(cls, setup: Setup) -> SharedTerms:
        if "terms" not in setup.shared:
            setup.shared["terms"] = cls(keep_elementwise="fullgrad" in setup.names)
        return setup.shared["terms"]

    def terms(self, record: Record) -> tuple[Term, ...]:
        if self._terms is None:
            self._terms = self.collector.finish(record)
        return self._terms


class BiasMethod:
    """Watches the decomposition's modules and feeds their gradients to the collector."""

    def __init__(self, setup: Setup, options: dict) -> None:
        self.shared = SharedTerms.of(setup)
        self.options = options

    def watch(self, model: nn.Module) -> dict[nn.Module, Keep | None]:
        return self.shared.collector.watch(model)

    def on_grad(self) -> OnGrad | None:
        return self.shared.collector


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


def fullgrad_postprocess(contribution: Tensor, eps: float = 1e-6) -> Tensor:
    """FullGrad's ``postprocess``: abs, min-max per sample over (C,h,w), sum over C.

    ``(|c| - min) / (max - min + eps)`` summed over channels, as the FullGrad authors'
    code does it; [B,C,h,w] -> [B,h,w].
    """
    magnitude = contribution.abs()
    lo, hi = torch.aminmax(magnitude.flatten(1), dim=1)
    channels = magnitude.shape[1]
    scale = (hi - lo + eps)[:, None, None]
    return (magnitude.sum(1) - channels * lo[:, None, None]) / scale


class FullGrad(BiasMethod):
    """FullGrad (Srinivas & Fleuret 2019): ``postprocess(x * dy/dx)`` plus, for every spatial
    bias term of the decomposition, ``upsample(postprocess(b_t * dy/dz_t))`` (bilinear,
    align_corners=False). The bias terms are SPEC 2's layer terms: a saturating
    activation's constants join the term of the layer that feeds it."""

    def attribute(self, record: Record) -> Tensor:
        size = input_size(record)
        by_grid: dict[tuple[int, int], Tensor] = {}
        for term in self.shared.terms(record):
            if term.spatial:
                part = fullgrad_postprocess(term.elementwise)
                by_grid[term.grid] = part + by_grid[term.grid] if term.grid in by_grid else part
        # upsampling is linear: one per grid size
        return torch.stack([upsample(m, size) for m in by_grid.values()]).sum(0)
