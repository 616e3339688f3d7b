"""T-Grad (the paper's formula 8) and its per-layer maps (SPEC section 2).

For the input term and every spatial bias term ``C_t`` [B,C,h,w]:

    S_t     = sum over channels of ReLU(C_t)      # the layer's map [B,h,w]
    score_t = ReLU(sum of all elements of C_t)    # its positive share of the logit [B]
    T-Grad  = sum over t of phi(S_t) * score_t

with ``phi`` = bilinear upsampling to H x W (align_corners=False), then division by the
map's sum (a map summing to 0 stays 0).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tgrad.capture import Target, check_input, check_model
from tgrad.decompose import Decomposition, Term, check_decomposable, decompose


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling (align_corners=False) of maps [B,h,w] to [B,*size]."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


@dataclass(frozen=True)
class TGradResult:
    """T-Grad for a batch: the saliency and the decomposition it was built from. All
    detached."""

    saliency: Tensor
    """The T-Grad saliency [B,H,W] (logit units per pixel; it sums to the sum of the
    scores of the spatial terms)."""
    decomposition: Decomposition
    """The logit split into its terms, with the record of the pass."""

    @property
    def logits(self) -> Tensor:
        """The model's logits [B,K]."""
        return self.decomposition.record.logits

    @property
    def target(self) -> Tensor:
        """The explained class of each sample [B]."""
        return self.decomposition.record.target

    @property
    def terms(self) -> tuple[Term, ...]:
        """The input term first, then every bias term in forward order."""
        return self.decomposition.terms

    @property
    def logit(self) -> Tensor:
        """The explained logit y [B]."""
        return self.decomposition.logit

    @property
    def gap(self) -> Tensor:
        """The completeness gap ``y - sum of all terms`` [B]."""
        return self.decomposition.gap

    @property
    def spatial_terms(self) -> tuple[Term, ...]:
        """The terms that have a map (input first), as in the paper's Fig. 2."""
        return tuple(t for t in self.terms if t.spatial)

    def cumulative(self, upto: int) -> Tensor:
        """The T-Grad saliency built from the first ``upto + 1`` spatial terms [B,H,W]
        (the paper's Fig. 2 read as a build-up; ``upto = last`` gives :attr:`saliency`).

        Raises:
            IndexError: ``upto`` is not a position ``0 .. len(spatial_terms) - 1``.
        """
        count = len(self.spatial_terms)
        if isinstance(upto, bool) or not isinstance(upto, int) or not 0 <= upto < count:
            raise IndexError(
                f"upto must be a spatial term position 0..{count - 1} "
                f"(there are {count} spatial terms), got {upto!r}"
            )
        return aggregate(self.spatial_terms[: upto + 1], tuple(self.saliency.shape[-2:]))


def coverage(grid: tuple[int, int], size: tuple[int, int], like: Tensor) -> Tensor:
    """How much mass upsampling ``grid`` to ``size`` gives each cell of the grid [h,w].

    Bilinear upsampling U is linear, so ``sum(U(S)) = <S, U^T 1>``; this is ``U^T 1``,
    computed by differentiating ``sum(U(ones))``, once per grid, size, dtype and device.
    """
    return _coverage(tuple(grid), tuple(size), like.dtype, like.device)


@functools.lru_cache(maxsize=256)
def _coverage(
    grid: tuple[int, int], size: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> Tensor:
    probe = torch.ones(1, *grid, device=device, dtype=dtype, requires_grad=True)
    with torch.enable_grad(), torch.inference_mode(False):
        (cells,) = torch.autograd.grad(upsample(probe, size).sum(), probe)
    return cells[0].detach()


def aggregate(terms: Sequence[Term], size: tuple[int, int]) -> Tensor:
    """Formula 8 over ``terms``: ``sum_t phi(S_t) * score_t`` [B,*size].

    ``phi`` upsamples a map (bilinear, align_corners=False) and divides it by its sum (a
    map summing to 0 stays 0). Upsampling U is linear, so for the maps that share a grid
    ``sum_t score_t * U(S_t) / sum(U(S_t)) = U(sum_t w_t * S_t)`` with
    ``w_t = score_t / sum(U(S_t))`` and ``sum(U(S_t)) = <S_t, U^T 1>`` (:func:`coverage`):
    one upsampling per grid size instead of one full-size map per layer. Equal to the
    term-by-term sum up to float rounding (tested against a plain implementation).
    """
    by_grid: dict[tuple[int, int], list[Term]] = {}
    for t in terms:
        if t.spatial:
            by_grid.setdefault(t.grid, []).append(t)
    first = terms[0].contribution
    saliency = first.new_zeros(first.shape[0], *size)
    for grid, group in by_grid.items():
        maps = torch.stack([t.map for t in group], 1)  # [B,T,h,w]
        scores = torch.stack([t.score for t in group], 1)  # [B,T]
        mass = (maps * coverage(grid, size, maps)).sum((2, 3))  # sum of each upsampled map
        weights = torch.where(mass > 0, scores / torch.where(mass > 0, mass, 1.0), 0.0)
        saliency += upsample(torch.einsum("bthw,bt->bhw", maps, weights), size)
    return saliency


def tgrad_from_decomposition(dec: Decomposition) -> TGradResult:
    """Formula 8 on a decomposition: every spatial term's map, weighted by its score."""
    saliency = aggregate(dec.terms, tuple(dec.record.input.shape[-2:]))
    return TGradResult(saliency, dec)


class TGrad:
    """T-Grad for any differentiable classifier (SPEC 1's tangent intercepts; on a
    piecewise-linear network, exactly the paper's bias terms).

    >>> explainer = TGrad(model)            # checks the model's modules
    >>> result = explainer(x, target=None)  # x: [B,3,H,W] normalised; None = top-1

    Every call checks the model again before its forward (it may have been put in
    training mode since), and never changes it. Hooks exist only during a call and are
    always removed, so one explainer may be used from several threads at once.

    Args:
        model: the classifier, in eval mode, returning logits.
        strict: refuse a model that cannot be decomposed exactly (naming the module and
            its type, or the operation and the module calling it: randomness, batch
            statistics, no derivative), and a result whose completeness gap exceeds
            ``1e-4 * max(1, |y|)``. With ``strict=False`` the result is returned with its
            gap.
    """

    def __init__(self, model: nn.Module, strict: bool = True) -> None:
        check_model(model)
        if strict:
            check_decomposable(model)
        self.model = model
        self.strict = strict

    def __call__(self, x: Tensor, target: Target = None) -> TGradResult:
        """Explain the target logit of each sample of ``x`` [B,C,H,W].

        Raises:
            ValueError: ``x`` is not a finite floating-point image batch [B,C,H,W], or
                a target is not a class index of the model.
            NotDecomposableError: see ``strict``.
        """
        check_input(x)
        if x.dim() != 4:
            raise ValueError(f"T-Grad needs images [B,C,H,W], got shape {tuple(x.shape)}")
        return tgrad_from_decomposition(decompose(self.model, x, target, strict=self.strict))
