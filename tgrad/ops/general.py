"""Intercepts without a closed form: autograd's own derivative for element-wise
functions of one tensor (its convention at every kink), forward-mode AD for the rest."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from tgrad.ops.base import (
    ACTIVATION,
    GATE,
    Piece,
    Plan,
    Unsupported,
    detached,
    in_place,
    out_of_place,
)
from tgrad.watch import Op


def autograd_elementwise(op: Op) -> Plan:
    """``c = f(u) - u * f'(u)`` for an element-wise function of one input-dependent tensor,
    ``f'`` taken from autograd (so ``c`` follows the backward pass at every kink)."""
    flat, spec = tree_flatten((op.args, op.kwargs))
    positions = [i for i, a in enumerate(flat) if isinstance(a, Tensor) and op.dependent(a)]
    if len(positions) != 1:
        return jvp(op)
    u = flat[positions[0]].detach()
    func = out_of_place(op)
    with torch.enable_grad():
        leaf = u.clone().requires_grad_(True)
        leaves = [detached(a) for a in flat]
        leaves[positions[0]] = leaf.clone()  # not the leaf itself: it may be written into
        args, kwargs = tree_unflatten(leaves, spec)
        z = func(*args, **kwargs)
        if not isinstance(z, Tensor) or z.shape != u.shape:
            return jvp(op)
        (slope,) = torch.autograd.grad(z.sum(), leaf, allow_unused=True)
    slope = torch.zeros_like(u) if slope is None else slope
    return Plan([Piece(ACTIVATION, intercept=z.detach() - u * slope, elementwise=True)])


def jvp(op: Op) -> Plan:
    """``c = f(u) - jvp(f, u, u)`` for every floating-point output, by forward-mode AD on
    a copy of the input-dependent arguments."""
    flat, spec = tree_flatten((op.args, op.kwargs))
    positions = [i for i, a in enumerate(flat) if isinstance(a, Tensor) and op.dependent(a)]
    copy = in_place(op)  # its values before the operation writes into them
    primals = tuple(flat[i].detach().clone() if copy else flat[i].detach() for i in positions)
    func = out_of_place(op)
    dependents = len(positions)

    def f(*values: Tensor):
        leaves = [detached(a) for a in flat]
        for i, v in zip(positions, values, strict=True):
            leaves[i] = v
        args, kwargs = tree_unflatten(leaves, spec)
        return func(*args, **kwargs)

    def later(outputs: list[Tensor]) -> list[Piece]:
        try:
            with torch.no_grad():
                value, tangent = torch.func.jvp(f, primals, primals)
        except (NotImplementedError, RuntimeError) as error:
            raise Unsupported(
                f"has no closed form here and no forward-mode derivative ({str(error)[:80]})"
            ) from error
        values = [v for v in (value if isinstance(value, (tuple, list)) else (value,))]
        tangents = [t for t in (tangent if isinstance(tangent, (tuple, list)) else (tangent,))]
        pieces, k = [], 0
        for v, t in zip(values, tangents, strict=True):
            if not (isinstance(v, Tensor) and v.is_floating_point()):
                continue
            c = v - t
            if bool(c.any()):
                role = GATE if dependents > 1 else ACTIVATION
                pieces.append(Piece(role, output=k, intercept=c))
            k += 1
        return pieces

    return Plan(later=later)
