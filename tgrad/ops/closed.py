"""Closed-form intercepts (SPEC 1's table): no forward-mode product needed."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from tgrad.ops.base import (
    ACTIVATION,
    BIAS,
    GATE,
    NORM,
    SATURATION,
    Piece,
    Plan,
    Unsupported,
    arg,
    batchnorm_shift,
    channel_view,
    detached,
    in_place,
    out_of_place,
    short_name,
)
from tgrad.ops.general import autograd_elementwise, jvp
from tgrad.watch import Op

_BIASED = frozenset(
    "conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear".split()
)
_PRODUCTS = frozenset("mul matmul rmatmul mm bmm mv dot vdot outer inner einsum kron".split())
"""Multilinear: homogeneous of degree k in k input-dependent operands."""


def _biased(op: Op) -> Plan | None:
    if op.dependent(arg(op, 1, "weight")):
        return jvp(op)  # a weight made from the input (dynamic convolution)
    bias = arg(op, 2, "bias")
    if bias is None:
        return None
    name = short_name(op.name)
    dim = op.args[0].dim() if name != "linear" else 0
    return Plan([Piece(BIAS, intercept=channel_view(bias.detach(), dim, name == "linear"))])


def _batch_norm(op: Op) -> Plan | None:
    if op.func is not F.batch_norm:
        return jvp(op)  # torch.batch_norm orders its arguments otherwise
    if arg(op, 5, "training", False):
        raise Unsupported(
            "normalises with the statistics of the batch (BatchNorm in training mode, or "
            "without running statistics), which mixes the samples"
        )
    statistics = tuple(arg(op, i, k) for i, k in ((1, "running_mean"), (2, "running_var"),
                                                   (3, "weight"), (4, "bias")))  # fmt: skip
    shift = _cached_shift(statistics, float(arg(op, 7, "eps", 1e-5)))
    return Plan([Piece(BIAS, intercept=channel_view(shift, op.args[0].dim(), False))])


_shifts: dict[int, tuple[weakref.ref, tuple, Tensor]] = {}


def _cached_shift(statistics: tuple, eps: float) -> Tensor:
    """BatchNorm's shift, computed once per set of statistics and kept while none of them
    changes (every tensor's identity and version counter is part of the key; an entry goes
    when its running variance is freed)."""
    var = statistics[1]
    key = (eps, *((id(t), t._version) if isinstance(t, Tensor) else None for t in statistics))
    cached = _shifts.get(id(var))
    if cached is not None and cached[0]() is var and cached[1] == key:
        return cached[2]
    shift = batchnorm_shift(*(detached(t) for t in statistics), eps)
    if isinstance(var, Tensor):
        ident = id(var)
        _shifts[ident] = (weakref.ref(var, lambda _, i=ident: _shifts.pop(i, None)), key, shift)
    return shift


def _hardtanh(op: Op, low: float, high: float) -> Plan | None:
    """Hardtanh/ReLU6: a unit at a bound is constant (autograd's derivative is 0 there)."""
    tests = [(torch.ge, high)] if high != 0 else []
    if low != 0:
        tests.append((torch.le, low))
    return _saturation(op.args[0].detach(), tests)


def _saturation(u: Tensor, tests: list[tuple[Callable, float]]) -> Plan | None:
    """Where each unit sits at each bound, as 0/1 masks of u's dtype (a float mask makes
    ``addcmul`` an order of magnitude faster than a boolean one, the same numbers)."""
    if not tests:
        return None
    masks = torch.empty((len(tests), *u.shape), dtype=u.dtype, device=u.device)
    for mask, (compare, bound) in zip(masks, tests, strict=True):
        compare(u, bound, out=mask)
    bounds = tuple(float(bound) for _, bound in tests)
    return Plan([Piece(SATURATION, masks=masks, bounds=bounds, elementwise=True)])


def _hardtanh_op(op: Op) -> Plan | None:
    return _hardtanh(op, float(arg(op, 1, "min_val", -1.0)), float(arg(op, 2, "max_val", 1.0)))


def _clamp(op: Op) -> Plan | None:
    """clamp/clip: as Hardtanh, a unit at a bound or beyond it is constant (autograd's
    derivative is 0 there)."""
    name = short_name(op.name)
    if name == "clamp_min":
        low, high = arg(op, 1, "min"), None
    elif name == "clamp_max":
        low, high = None, arg(op, 1, "max")
    else:
        low, high = arg(op, 1, "min"), arg(op, 2, "max")
    if isinstance(low, Tensor) or isinstance(high, Tensor):
        return autograd_elementwise(op)
    tests = [(torch.ge, high)] if high is not None and high != 0 else []
    if low is not None and low != 0:
        tests.append((torch.le, low))
    return _saturation(op.args[0].detach(), tests)


def _maximum(op: Op) -> Plan | None:
    """Element-wise max/min: piecewise linear without constants between two dependent
    tensors; against a constant, a unit at the constant takes it as its intercept."""
    other = arg(op, 1, "other")
    if op.dependent(op.args[0]) and op.dependent(other):
        return None
    return autograd_elementwise(op)


def _unary(op: Op, role: str, form: Callable[[Tensor], Tensor]) -> Plan:
    return Plan([Piece(role, intercept=form(op.args[0].detach()), elementwise=True)])


def _through_backward(op: Op, slope_times: Callable[[Tensor], Tensor]) -> Plan:
    """``c = f(u) - u * f'(u)`` for an element-wise activation whose ATen backward kernel
    gives ``u * f'(u)`` in one pass (``slope_times(u)``, the very derivative autograd uses,
    so ``c`` follows the backward pass at every kink); ``f(u)`` is the operation's own
    output, so nothing of ``f`` is computed twice. Before the operation runs, ``u * f'(u)``
    is taken (an in-place activation writes over ``u``)."""
    along = slope_times(op.args[0].detach())

    def later(outputs: list[Tensor]) -> list[Piece]:
        return [Piece(ACTIVATION, intercept=outputs[0].detach() - along, elementwise=True)]

    return Plan(later=later)


def _silu(op: Op) -> Plan:
    """SiLU ``u s(u)``: ``c = -u^2 s(u) (1 - s(u))`` (SPEC 1), as ``f(u) - u f'(u)``."""
    return _through_backward(op, lambda u: torch.ops.aten.silu_backward(u, u))


def _gelu(op: Op) -> Plan:
    """GELU ``u Phi(u)``: ``c = -u^2 phi(u)`` (SPEC 1), as ``f(u) - u f'(u)``; the tanh
    approximation likewise, with its own derivative."""
    approximate = arg(op, 1, "approximate", "none")
    return _through_backward(
        op, lambda u: torch.ops.aten.gelu_backward(u, u, approximate=approximate)
    )


def _hardswish(op: Op) -> Plan:
    """Hardswish: ``c = -u^2 / 6`` where ``-3 < u < 3``, else 0."""
    return _through_backward(op, lambda u: torch.ops.aten.hardswish_backward(u, u))


def _hardsigmoid(op: Op) -> Plan:
    """Hardsigmoid: ``c = 1/2`` where ``-3 < u < 3``, 1 from 3 up, 0 from -3 down."""
    return _through_backward(op, lambda u: torch.ops.aten.hardsigmoid_backward(u, u))


def _sigmoid(u: Tensor) -> Tensor:
    s = torch.sigmoid(u)
    return s - u * s * (1 - s)


def _tanh(u: Tensor) -> Tensor:
    t = torch.tanh(u)
    return t - u * (1 - t * t)


def _products(op: Op) -> Plan | None:
    """A multilinear product of k input-dependent operands: ``c = (1 - k) f``, from the
    operation's own output."""
    flat, spec = tree_flatten((op.args, op.kwargs))
    k = sum(1 for a in flat if isinstance(a, Tensor) and op.dependent(a))
    if k < 2:
        return None
    if in_place(op):  # its output is written over an operand: the product, before
        args, kwargs = tree_unflatten([detached(a) for a in flat], spec)
        value = out_of_place(op)(*args, **kwargs)
        return Plan([Piece(GATE, intercept=(1 - k) * value)])
    return Plan(later=lambda outputs: [Piece(GATE, intercept=(1 - k) * outputs[0].detach())])


def _div(op: Op) -> Plan | None:
    """``a / b`` is homogeneous of degree ``[a dependent] - [b dependent]``."""
    if arg(op, 2, "rounding_mode") is not None:
        return None  # floor/trunc division: locally constant, its consumer's intercept
    a, b = op.args[0], arg(op, 1, "other")
    reverse = short_name(op.name) == "rdiv"
    numerator, denominator = (b, a) if reverse else (a, b)
    degree = int(op.dependent(numerator)) - int(op.dependent(denominator))
    if degree == 1:
        return None
    value = torch.div(detached(numerator), detached(denominator))
    return Plan([Piece(GATE, intercept=(1 - degree) * value)])


def _pow(op: Op) -> Plan | None:
    base, exponent = op.args[0], arg(op, 1, "exponent")
    if short_name(op.name) == "rpow":
        base, exponent = exponent, base
    if op.dependent(exponent) or isinstance(exponent, Tensor):
        return jvp(op)
    if not op.dependent(base):
        return None
    return homogeneous(op, float(exponent), lambda u: torch.pow(u, exponent))


def homogeneous(op: Op, degree: float, form: Callable | None = None) -> Plan | None:
    """``f(t u) = t^d f(u)``: ``J u = d f``, so ``c = (1 - d) f``."""
    if degree == 1:
        return None
    u = op.args[0].detach()
    value = form(u) if form is not None else out_of_place(op)(u)
    role = GATE if short_name(op.name) == "reciprocal" else ACTIVATION
    return Plan([Piece(role, intercept=(1 - degree) * value, elementwise=True)])


def _share(u: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    """``k = v / (v + eps)`` of a normalisation over ``dims`` (v its biased variance)."""
    var = torch.var(u, dim=dims, unbiased=False, keepdim=True)
    return var / (var + eps)


def _norm_piece(k: Tensor, bias: Tensor | None, view: Callable[[Tensor], Tensor]) -> Plan:
    """A normalisation's intercept ``gamma * n * v / (v + eps) + beta`` (SPEC 1), from its
    own output ``z = gamma * n + beta``: ``c = z * k + beta * (1 - k)``, ``k = v / (v + eps)``
    (one variance before it runs, two passes after; ``n`` is never formed again)."""

    def later(outputs: list[Tensor]) -> list[Piece]:
        c = outputs[0].detach() * k
        if bias is not None:
            c.addcmul_(view(bias.detach()), 1 - k)
        return [Piece(NORM, intercept=c)]

    return Plan(later=later)


def normalized_shape(op: Op) -> tuple[int, ...]:
    """A LayerNorm's or RMSNorm's ``normalized_shape``, as a tuple."""
    shape = arg(op, 1, "normalized_shape")
    return (shape,) if isinstance(shape, int) else tuple(shape)


def _last_dims(u: Tensor, op: Op) -> tuple[int, ...]:
    count = len(normalized_shape(op))
    return tuple(range(u.dim() - count, u.dim()))


def _layer_norm(op: Op) -> Plan:
    u = op.args[0].detach()
    k = _share(u, _last_dims(u, op), float(arg(op, 4, "eps", 1e-5)))
    return _norm_piece(k, arg(op, 3, "bias"), lambda p: p)


def _group_norm(op: Op) -> Plan:
    u = op.args[0].detach()
    groups = int(arg(op, 1, "num_groups"))
    k = _share(u.reshape(u.shape[0], groups, -1), (2,), float(arg(op, 4, "eps", 1e-5)))
    k = k.repeat_interleave(u.shape[1] // groups, dim=1).reshape(
        u.shape[0], u.shape[1], *[1] * (u.dim() - 2)
    )  # per channel of each group
    return _norm_piece(k, arg(op, 3, "bias"), lambda p: channel_view(p, u.dim(), False))


def _instance_norm(op: Op) -> Plan:
    if op.func is not F.instance_norm:
        return jvp(op)  # torch.instance_norm orders its arguments otherwise
    u = op.args[0].detach()
    weight, bias = arg(op, 3, "weight"), arg(op, 4, "bias")
    eps = float(arg(op, 7, "eps", 1e-5))
    if not arg(op, 5, "use_input_stats", True):
        mean, var = detached(arg(op, 1, "running_mean")), detached(arg(op, 2, "running_var"))
        shift = batchnorm_shift(mean, var, detached(weight), detached(bias), eps)
        return Plan([Piece(BIAS, intercept=channel_view(shift, u.dim(), False))])
    k = _share(u, tuple(range(2, u.dim())), eps)
    return _norm_piece(k, bias, lambda p: channel_view(p, u.dim(), False))


def _rms_norm(op: Op) -> Plan:
    """RMSNorm ``z = u / sqrt(m + eps) * w`` (m the mean square): ``c = z * m / (m + eps)``."""
    u = op.args[0].detach()
    eps = arg(op, 3, "eps")
    eps = torch.finfo(u.dtype).eps if eps is None else float(eps)
    square = (u * u).mean(_last_dims(u, op), keepdim=True)
    return _norm_piece(square / (square + eps), None, lambda p: p)


def max_min(op: Op) -> Plan | None:
    """``max``/``min`` reduce (no intercept) unless given a second tensor (element-wise)."""
    return _maximum(op) if isinstance(arg(op, 1, "other"), Tensor) else None


def affine(op: Op) -> Plan | None:
    """The constants an affine operation adds: itself with its input-dependent arguments
    replaced by zeros (residual additions of two dependent tensors add none)."""
    name = short_name(op.name)
    if name in ("add", "sub") and len(op.args) >= 2 and all(op.dependent(a) for a in op.args[:2]):
        return None
    if name in ("pad", "constant_pad_nd") and not arg(op, 3, "value"):
        mode = arg(op, 2, "mode", "constant")
        if mode == "constant" or name == "constant_pad_nd":
            return None  # zeros, or a reflection/replication of the input: linear
    flat, spec = tree_flatten((op.args, op.kwargs))
    zeroed = []
    for position, a in enumerate(flat):
        if isinstance(a, Tensor) and op.dependent(a):
            a = torch.zeros_like(a, memory_format=torch.contiguous_format)
        elif position == 0 and isinstance(a, Tensor) and in_place(op):
            a = a.detach().clone()  # the operation writes into it
        zeroed.append(a)
    args, kwargs = tree_unflatten(zeroed, spec)
    value = op.func(*args, **kwargs)
    if value is None:  # __setitem__ and other in-place operations
        value = args[0]
    if not bool(value.any()):
        return None
    return Plan([Piece(BIAS, intercept=value.detach())])


# ----------------------------------------------------------------------- general forms


RULES: dict[str, Callable[[Op], Plan | None]] = {
    **dict.fromkeys(_BIASED, _biased),
    "batch_norm": _batch_norm,
    "hardtanh": _hardtanh_op,
    "relu6": lambda op: _hardtanh(op, 0.0, 6.0),
    "clamp": _clamp,
    "clip": _clamp,
    "clamp_min": _clamp,
    "clamp_max": _clamp,
    "silu": _silu,
    "gelu": _gelu,
    "sigmoid": lambda op: _unary(op, ACTIVATION, _sigmoid),
    "tanh": lambda op: _unary(op, ACTIVATION, _tanh),
    "hardswish": _hardswish,
    "hardsigmoid": _hardsigmoid,
    **dict.fromkeys(_PRODUCTS, _products),
    "div": _div,
    "divide": _div,
    "true_divide": _div,
    "rdiv": _div,
    "pow": _pow,
    "rpow": _pow,
    "maximum": _maximum,
    "minimum": _maximum,
    "fmax": _maximum,
    "fmin": _maximum,
    "layer_norm": _layer_norm,
    "group_norm": _group_norm,
    "instance_norm": _instance_norm,
    "rms_norm": _rms_norm,
}
"""Closed forms by short operation name."""
