"""What the explanation cache keeps of a T-Grad result: only what the views draw.

A :class:`~tgrad.tgrad.TGradResult` holds its decomposition, and through it the record
of the capture pass (every call's tensors, and the modules, hence the model). A cached
explanation keeps a :class:`KeptResult` instead: the saliency, each term's name, kind,
contribution and map on its own grid, the logits and the target, all copied to the CPU
into storages of their own (the terms are the engine's, their tensors copied). It reads
like the result (``saliency``, ``terms``,
``logits``, ``target``, ``logit``, ``gap``, ``spatial_terms``, ``cumulative(k)``), so
the views draw from either, and it reaches no module and no record: evicting a model
from the model cache frees it even while its explanations stay cached.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from functools import cached_property

import torch
from torch import Tensor

from tgrad.decompose import Term
from tgrad.tgrad import TGradResult, aggregate


def _own(tensor: Tensor) -> Tensor:
    """A detached CPU copy with a storage of its own (never a view into a larger one)."""
    return tensor.detach().cpu().clone(memory_format=torch.contiguous_format)


def kept_term(term: Term) -> Term:
    """The engine's term of sample 0 with its contribution and map copied out, and every
    other tensor it may hold (the element-wise contribution, when kept) dropped."""
    dropped = {
        f.name: None
        for f in fields(term)
        if f.name not in ("contribution", "map") and isinstance(getattr(term, f.name), Tensor)
    }
    return replace(
        term,
        contribution=_own(term.contribution[:1]),
        map=None if term.map is None else _own(term.map[:1]),
        **dropped,
    )


@dataclass(frozen=True)
class KeptResult:
    """A T-Grad result of a batch of one, without its decomposition's record."""

    saliency: Tensor
    """[1,H,W]"""
    terms: tuple[Term, ...]
    """The input term first, then every other term in forward order."""
    logits: Tensor
    """[1,K]"""
    target: Tensor
    """[1]"""
    logit: Tensor
    """[1]"""
    gap: Tensor
    """[1], the completeness gap ``logit - sum of all terms``."""

    @classmethod
    def of(cls, result: TGradResult) -> KeptResult:
        """Copy what the views need out of ``result`` (sample 0)."""
        terms = tuple(kept_term(t) for t in result.terms)
        return cls(
            _own(result.saliency[:1]),
            terms,
            _own(result.logits[:1]),
            _own(result.target[:1]),
            _own(result.logit[:1]),
            _own(result.gap[:1]),
        )

    @cached_property
    def spatial_terms(self) -> tuple[Term, ...]:
        """The terms with a map, input first: the layer slider's positions."""
        return tuple(t for t in self.terms if t.spatial)

    def cumulative(self, upto: int) -> Tensor:
        """T-Grad built from the first ``upto + 1`` spatial terms [1,H,W] (formula 8, as
        :meth:`tgrad.tgrad.TGradResult.cumulative`; at the last position the saliency)."""
        count = len(self.spatial_terms)
        if isinstance(upto, bool) or not isinstance(upto, int) or not 0 <= upto < count:
            raise IndexError(f"upto must be a spatial term position 0..{count - 1}, got {upto!r}")
        return aggregate(self.spatial_terms[: upto + 1], tuple(self.saliency.shape[-2:]))

    def tensors(self) -> Iterable[Tensor]:
        """Every tensor it holds (for accounting)."""
        yield from (self.saliency, self.logits, self.target, self.logit, self.gap)
        for term in self.terms:
            yield term.contribution
            if term.map is not None:
                yield term.map


def storage_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a view counts its whole storage)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


__all__ = ["KeptResult", "kept_term", "storage_bytes"]
