"""What each operation of a forward pass contributes to the logit (SPEC section 1).

Every operation ``z = f(u_1, ..., u_k)`` whose arguments depend on the input is replaced
by its tangent ``z = J_f(u) . u + c``; its **intercept** ``c = f(u) - J_f(u) . u`` (the
input-dependent arguments as tangents, everything else held constant) contributes
``<c, dy/dz>`` to the logit. :func:`plan` tells, for one operation seen before it runs,
what its intercept is:

* nothing, for operations that are linear in their input-dependent arguments
  (reshapes, sums, pooling, interpolation, products with constants, convolutions without
  a bias, ...) or piecewise linear without constants (ReLU, LeakyReLU, PReLU, max, abs,
  sort, top-k, max pooling);
* a closed form where one is known (no forward-mode product): a convolution's or
  linear map's bias, eval BatchNorm's folded shift, a constant added, the clipped value
  of a saturated Hardtanh/ReLU6/clamp unit, SiLU, GELU, Sigmoid, Tanh, Hardswish,
  Hardsigmoid, products and quotients of input-dependent tensors (homogeneous: ``c = (1
  - d) f`` for degree ``d``), powers and roots, LayerNorm, GroupNorm, InstanceNorm and
  RMSNorm;
* for the other element-wise functions of one tensor (``exp``, ``softplus``, ``mish``,
  ...), ``c = f(u) - u * f'(u)`` with ``f'`` from autograd itself, so that ``c`` follows
  the backward pass's convention at every kink;
* for anything else, ``f(u) - jvp(f, u, u)`` by :func:`torch.func.jvp`.

Refused (:class:`Unsupported`): randomness (dropout in training mode, ``bernoulli``,
``rand*``, ...), batch statistics (BatchNorm in training mode, which mixes the samples
of a batch), and an operation that has neither a closed form nor a forward-mode
derivative. Each intercept carries its role: ``bias``, ``saturation``, ``activation``,
``gate`` (a product or quotient of input-dependent tensors) or ``norm``.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from tgrad.capture import RANDOM, Op, op_name

BIAS, SATURATION, ACTIVATION, GATE, NORM = "bias", "saturation", "activation", "gate", "norm"
ROLES = (BIAS, SATURATION, ACTIVATION, GATE, NORM)


class Unsupported(ValueError):
    """An operation the decomposition cannot take exactly, with the reason."""


@dataclass(frozen=True)
class Piece:
    """What one operation adds to the logit: its intercept at one of its outputs.

    Its element-wise contribution is ``C = c * dy/dz`` (``z`` the output): ``c`` is
    ``intercept`` (broadcast to the output's shape), or, for a saturated unit, the sum of
    ``bound * mask`` over ``masks`` and ``bounds``.
    """

    role: str
    """``bias``, ``saturation``, ``activation``, ``gate`` or ``norm``."""
    output: int = 0
    """Which of the operation's input-dependent outputs it belongs to."""
    intercept: Tensor | None = None
    masks: Tensor | None = None
    """[k, *output.shape], 1 where a unit sits at each of ``bounds``, else 0."""
    bounds: tuple[float, ...] = ()
    elementwise: bool = False
    """Element-wise in one input-dependent argument (which may belong to the layer that
    made that argument, SPEC 2)."""

    def add_to(self, grad: Tensor, into: Tensor | None) -> Tensor:
        """``into + c * grad`` (in place when ``into`` is given), the piece's C added."""
        if self.masks is not None:
            if into is None:
                into = torch.zeros_like(grad)
            for mask, bound in zip(self.masks, self.bounds, strict=True):
                into.addcmul_(mask, grad, value=bound)
            return into
        if into is None:
            return self.intercept * grad
        return into.addcmul_(self.intercept, grad)


class Plan:
    """The intercepts of one operation, made from what it was given (before it ran) and,
    where needed, its outputs."""

    def __init__(self, pieces: list[Piece] | None = None, later: Callable | None = None):
        self._pieces = pieces or []
        self._later = later

    def pieces(self, outputs: list[Tensor]) -> list[Piece]:
        if self._later is None:
            return self._pieces
        return [p for p in self._later(outputs) if p is not None]


_DUNDERS = {
    "__add__": "add", "__radd__": "add", "__iadd__": "add", "__sub__": "sub",
    "__isub__": "sub", "__rsub__": "rsub", "__mul__": "mul", "__rmul__": "mul",
    "__imul__": "mul", "__truediv__": "div", "__itruediv__": "div", "__rtruediv__": "rdiv",
    "__div__": "div", "__rdiv__": "rdiv", "__neg__": "neg", "__pos__": "positive",
    "__abs__": "abs", "__getitem__": "getitem", "__setitem__": "setitem",
    "__matmul__": "matmul", "__rmatmul__": "rmatmul", "__pow__": "pow", "__rpow__": "rpow",
    "__ipow__": "pow",
}  # fmt: skip


def short_name(qualified: str) -> str:
    """``torch.Tensor.add_`` -> ``add``, ``torch.Tensor.__mul__`` -> ``mul``."""
    name = qualified.rsplit(".", 1)[-1]
    name = _DUNDERS.get(name, name)
    return name[:-1] if name.endswith("_") and not name.startswith("_") else name


@functools.cache
def _inplace_position(func: Callable) -> int | None:
    """The position of a function's ``inplace`` parameter (``F.hardswish(x, True)``)."""
    try:
        parameters = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None
    return parameters.index("inplace") if "inplace" in parameters else None


def in_place(op: Op) -> bool:
    """Whether the operation writes into its first argument."""
    last = op.name.rsplit(".", 1)[-1]
    if (last.endswith("_") and not last.endswith("__")) or last.startswith("__i"):
        return True
    if last == "__setitem__" or op.kwargs.get("inplace"):
        return True
    position = _inplace_position(op.func)
    return position is not None and len(op.args) > position and bool(op.args[position])


_ZERO = frozenset(
    """view reshape flatten unflatten permute transpose t contiguous clone getitem narrow
    select split split_with_sizes chunk unbind tensor_split squeeze unsqueeze expand
    expand_as repeat tile flip fliplr flipud roll rot90 movedim moveaxis swapaxes swapdims
    diagonal diag diag_embed tril triu sum nansum mean cumsum diff trace neg negative
    positive to float double half bfloat16 cpu cuda type type_as view_as reshape_as
    adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d avg_pool1d avg_pool2d
    avg_pool3d interpolate upsample upsample_bilinear upsample_nearest pixel_shuffle
    pixel_unshuffle channel_shuffle native_channel_shuffle index_select gather take
    take_along_dim repeat_interleave masked_select unfold fold T mT H mH real relu
    leaky_relu rrelu prelu abs max_pool1d max_pool2d max_pool3d max_pool1d_with_indices
    max_pool2d_with_indices max_pool3d_with_indices adaptive_max_pool1d adaptive_max_pool2d
    adaptive_max_pool3d max min amax amin sort topk kthvalue median nanmedian msort cummax
    cummin identity alias detach_copy lp_pool1d lp_pool2d""".split()
)
"""Linear in their one input-dependent argument (other arguments are shapes, dims,
indices or ``like`` tensors), or piecewise linear without constants: no intercept."""

_AFFINE = frozenset(
    """add sub rsub cat concat concatenate stack hstack vstack dstack pad constant_pad_nd
    where masked_fill setitem index_put index_add scatter scatter_add copy
    fill_diagonal""".split()
)
"""Affine in their input-dependent arguments: the intercept is the operation applied with
those replaced by zeros (the constants it adds)."""

_BIASED = frozenset(
    "conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear".split()
)
_PRODUCTS = frozenset("mul matmul rmatmul mm bmm mv dot vdot outer inner einsum kron".split())
"""Multilinear: homogeneous of degree k in k input-dependent operands."""

_HOMOGENEOUS_UNARY = {"sqrt": 0.5, "rsqrt": -0.5, "reciprocal": -1.0, "square": 2.0}

_ELEMENTWISE = frozenset(
    """exp exp2 expm1 log log2 log10 log1p sin cos tan asin acos atan sinh cosh asinh
    acosh atanh arcsin arccos arctan arcsinh arccosh arctanh erf erfc erfinv logit
    softplus elu selu celu mish logsigmoid softsign tanhshrink hardshrink softshrink
    threshold frac sinc sigmoid silu gelu tanh hardswish hardsigmoid relu6 hardtanh
    clamp clip clamp_min clamp_max nan_to_num float_power xlogy maximum minimum fmax
    """.split()
)
"""Element-wise functions of one input-dependent tensor."""

_DROPOUT = frozenset(
    """dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
    feature_dropout""".split()
)


def is_random(op_short: str, op: Op) -> bool:
    """Whether an operation draws random numbers (dropout only in training mode)."""
    if op_short in RANDOM:
        return True
    if op_short in _DROPOUT:
        return bool(_arg(op, 2, "training", True)) and bool(_arg(op, 1, "p", 0.5))
    if op_short == "rrelu":
        return bool(_arg(op, 3, "training", False))
    return False


def _arg(op: Op, position: int, keyword: str, default: object = None) -> object:
    if len(op.args) > position:
        return op.args[position]
    return op.kwargs.get(keyword, default)


def _detached(value: object) -> object:
    return value.detach() if isinstance(value, Tensor) else value


def _channel_view(b: Tensor, output_dim: int, last: bool) -> Tensor:
    """A per-channel vector shaped to broadcast over an output (channels at dim 1, or
    the last dim for a linear map)."""
    return b if last else b.reshape(1, -1, *([1] * (output_dim - 2)))


def batchnorm_shift(mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None,
                    eps: float) -> Tensor:  # fmt: skip
    """Eval BatchNorm's folded shift ``beta - gamma * mean / sqrt(var + eps)`` [C]."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    b = -mean * scale
    return b if bias is None else b + bias


def plan(op: Op) -> Plan | None:
    """What an operation's intercept is (see the module docstring); None: it has none.

    Called before the operation runs, so its arguments hold their values before it (also
    for an in-place operation).

    Raises:
        Unsupported: randomness, batch statistics, or no derivative (strict mode refuses).
    """
    name = short_name(op.name)
    if is_random(name, op):
        raise Unsupported("draws random numbers (dropout or noise in training mode)")
    if name in _DROPOUT:
        return None
    rule = _RULES.get(name)
    if rule is not None:
        return rule(op)
    if name in _ZERO:
        return None if name not in ("max", "min") else _max_min(op)
    if name in _AFFINE:
        return _affine(op)
    if name in _HOMOGENEOUS_UNARY:
        return _homogeneous(op, _HOMOGENEOUS_UNARY[name])
    if name in _ELEMENTWISE:
        return _autograd_elementwise(op)
    return _jvp(op)


# --------------------------------------------------------------------------- closed forms


def _biased(op: Op) -> Plan | None:
    if op.dependent(_arg(op, 1, "weight")):
        return _jvp(op)  # a weight made from the input (dynamic convolution)
    bias = _arg(op, 2, "bias")
    if bias is None:
        return None
    name = short_name(op.name)
    dim = op.args[0].dim() if name != "linear" else 0
    return Plan([Piece(BIAS, intercept=_channel_view(bias.detach(), dim, name == "linear"))])


def _batch_norm(op: Op) -> Plan | None:
    if op.func is not F.batch_norm:
        return _jvp(op)  # torch.batch_norm orders its arguments otherwise
    if _arg(op, 5, "training", False):
        raise Unsupported(
            "normalises with the statistics of the batch (BatchNorm in training mode, or "
            "without running statistics), which mixes the samples"
        )
    shift = batchnorm_shift(
        *(_detached(_arg(op, i, k)) for i, k in ((1, "running_mean"), (2, "running_var"))),
        _detached(_arg(op, 3, "weight")),
        _detached(_arg(op, 4, "bias")),
        float(_arg(op, 7, "eps", 1e-5)),
    )
    return Plan([Piece(BIAS, intercept=_channel_view(shift, op.args[0].dim(), False))])


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
    return _hardtanh(op, float(_arg(op, 1, "min_val", -1.0)), float(_arg(op, 2, "max_val", 1.0)))


def _clamp(op: Op) -> Plan | None:
    """clamp/clip: as Hardtanh, a unit at a bound or beyond it is constant (autograd's
    derivative is 0 there)."""
    name = short_name(op.name)
    if name == "clamp_min":
        low, high = _arg(op, 1, "min"), None
    elif name == "clamp_max":
        low, high = None, _arg(op, 1, "max")
    else:
        low, high = _arg(op, 1, "min"), _arg(op, 2, "max")
    if isinstance(low, Tensor) or isinstance(high, Tensor):
        return _autograd_elementwise(op)
    tests = [(torch.ge, high)] if high is not None and high != 0 else []
    if low is not None and low != 0:
        tests.append((torch.le, low))
    return _saturation(op.args[0].detach(), tests)


def _maximum(op: Op) -> Plan | None:
    """Element-wise max/min: piecewise linear without constants between two dependent
    tensors; against a constant, a unit at the constant takes it as its intercept."""
    other = _arg(op, 1, "other")
    if op.dependent(op.args[0]) and op.dependent(other):
        return None
    return _autograd_elementwise(op)


def _unary(op: Op, role: str, form: Callable[[Tensor], Tensor]) -> Plan:
    return Plan([Piece(role, intercept=form(op.args[0].detach()), elementwise=True)])


def _silu(u: Tensor) -> Tensor:
    s = torch.sigmoid(u)
    return -(u * u) * s * (1 - s)


def _gelu(op: Op) -> Plan:
    if _arg(op, 1, "approximate", "none") != "none":
        return _autograd_elementwise(op)
    return _unary(
        op, ACTIVATION, lambda u: -(u * u) * torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    )


def _sigmoid(u: Tensor) -> Tensor:
    s = torch.sigmoid(u)
    return s - u * s * (1 - s)


def _tanh(u: Tensor) -> Tensor:
    t = torch.tanh(u)
    return t - u * (1 - t * t)


def _hardswish(u: Tensor) -> Tensor:
    # autograd: derivative u/3 + 1/2 on (-3, 3), 0 from -3 down, 1 from 3 up
    return torch.where((u > -3) & (u < 3), -(u * u) / 6, 0.0)


def _hardsigmoid(u: Tensor) -> Tensor:
    # autograd: derivative 1/6 on (-3, 3), 0 elsewhere
    return torch.where(u >= 3, 1.0, torch.where(u > -3, 0.5, 0.0)).to(u.dtype)


def _products(op: Op) -> Plan | None:
    """A multilinear product of k input-dependent operands: ``c = (1 - k) f``."""
    flat, spec = tree_flatten((op.args, op.kwargs))
    k = sum(1 for a in flat if isinstance(a, Tensor) and op.dependent(a))
    if k < 2:
        return None
    args, kwargs = tree_unflatten([_detached(a) for a in flat], spec)
    value = _out_of_place(op)(*args, **kwargs)
    return Plan([Piece(GATE, intercept=(1 - k) * value)])


def _div(op: Op) -> Plan | None:
    """``a / b`` is homogeneous of degree ``[a dependent] - [b dependent]``."""
    if _arg(op, 2, "rounding_mode") is not None:
        return None  # floor/trunc division: locally constant, its consumer's intercept
    a, b = op.args[0], _arg(op, 1, "other")
    reverse = short_name(op.name) == "rdiv"
    numerator, denominator = (b, a) if reverse else (a, b)
    degree = int(op.dependent(numerator)) - int(op.dependent(denominator))
    if degree == 1:
        return None
    value = torch.div(_detached(numerator), _detached(denominator))
    return Plan([Piece(GATE, intercept=(1 - degree) * value)])


def _pow(op: Op) -> Plan | None:
    base, exponent = op.args[0], _arg(op, 1, "exponent")
    if short_name(op.name) == "rpow":
        base, exponent = exponent, base
    if op.dependent(exponent) or isinstance(exponent, Tensor):
        return _jvp(op)
    if not op.dependent(base):
        return None
    return _homogeneous(op, float(exponent), lambda u: torch.pow(u, exponent))


def _homogeneous(op: Op, degree: float, form: Callable | None = None) -> Plan | None:
    """``f(t u) = t^d f(u)``: ``J u = d f``, so ``c = (1 - d) f``."""
    if degree == 1:
        return None
    u = op.args[0].detach()
    value = form(u) if form is not None else _out_of_place(op)(u)
    role = GATE if short_name(op.name) == "reciprocal" else ACTIVATION
    return Plan([Piece(role, intercept=(1 - degree) * value, elementwise=True)])


def _normalised(u: Tensor, dims: tuple[int, ...], eps: float) -> tuple[Tensor, Tensor]:
    var, mean = torch.var_mean(u, dim=dims, unbiased=False, keepdim=True)
    return (u - mean) * torch.rsqrt(var + eps), var


def _norm_piece(n: Tensor, var: Tensor, eps: float, weight, bias, view) -> Plan:
    """``gamma * n * v / (v + eps) + beta``: a normalisation's intercept (SPEC 1)."""
    c = n * (var / (var + eps))
    if weight is not None:
        c = c * view(weight.detach())
    if bias is not None:
        c = c + view(bias.detach())
    return Plan([Piece(NORM, intercept=c)])


def normalized_shape(op: Op) -> tuple[int, ...]:
    """A LayerNorm's or RMSNorm's ``normalized_shape``, as a tuple."""
    shape = _arg(op, 1, "normalized_shape")
    return (shape,) if isinstance(shape, int) else tuple(shape)


def _layer_norm(op: Op) -> Plan:
    u = op.args[0].detach()
    count = len(normalized_shape(op))
    eps = float(_arg(op, 4, "eps", 1e-5))
    n, var = _normalised(u, tuple(range(u.dim() - count, u.dim())), eps)
    return _norm_piece(n, var, eps, _arg(op, 2, "weight"), _arg(op, 3, "bias"), lambda p: p)


def _group_norm(op: Op) -> Plan:
    u = op.args[0].detach()
    groups = int(_arg(op, 1, "num_groups"))
    eps = float(_arg(op, 4, "eps", 1e-5))
    grouped = u.reshape(u.shape[0], groups, -1)
    n, var = _normalised(grouped, (2,), eps)
    view = lambda p: _channel_view(p, u.dim(), False)  # noqa: E731
    var = var.expand(-1, -1, grouped.shape[2]).reshape(u.shape)
    return _norm_piece(n.reshape(u.shape), var, eps, _arg(op, 2, "weight"), _arg(op, 3, "bias"),
                       view)  # fmt: skip


def _instance_norm(op: Op) -> Plan:
    if op.func is not F.instance_norm:
        return _jvp(op)  # torch.instance_norm orders its arguments otherwise
    u = op.args[0].detach()
    weight, bias = _arg(op, 3, "weight"), _arg(op, 4, "bias")
    eps = float(_arg(op, 7, "eps", 1e-5))
    if not _arg(op, 5, "use_input_stats", True):
        mean, var = _detached(_arg(op, 1, "running_mean")), _detached(_arg(op, 2, "running_var"))
        shift = batchnorm_shift(mean, var, _detached(weight), _detached(bias), eps)
        return Plan([Piece(BIAS, intercept=_channel_view(shift, u.dim(), False))])
    n, var = _normalised(u, tuple(range(2, u.dim())), eps)
    return _norm_piece(n, var, eps, weight, bias, lambda p: _channel_view(p, u.dim(), False))


def _rms_norm(op: Op) -> Plan:
    u = op.args[0].detach()
    count = len(normalized_shape(op))
    eps = _arg(op, 3, "eps")
    eps = torch.finfo(u.dtype).eps if eps is None else float(eps)
    square = (u * u).mean(tuple(range(u.dim() - count, u.dim())), keepdim=True)
    c = u * torch.rsqrt(square + eps) * (square / (square + eps))
    weight = _arg(op, 2, "weight")
    return Plan([Piece(NORM, intercept=c if weight is None else c * weight.detach())])


def _max_min(op: Op) -> Plan | None:
    """``max``/``min`` reduce (no intercept) unless given a second tensor (element-wise)."""
    return _maximum(op) if isinstance(_arg(op, 1, "other"), Tensor) else None


def _affine(op: Op) -> Plan | None:
    """The constants an affine operation adds: itself with its input-dependent arguments
    replaced by zeros (residual additions of two dependent tensors add none)."""
    name = short_name(op.name)
    if name in ("add", "sub") and len(op.args) >= 2 and all(op.dependent(a) for a in op.args[:2]):
        return None
    if name in ("pad", "constant_pad_nd") and not _arg(op, 3, "value"):
        mode = _arg(op, 2, "mode", "constant")
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


def _out_of_place(op: Op) -> Callable:
    """The operation itself, never writing into its arguments."""
    func = op.func
    name = op.name.rsplit(".", 1)[-1]
    if name.startswith("__i") and name.endswith("__"):
        return getattr(torch.Tensor, "__" + name[3:])
    if name.endswith("_") and not name.endswith("__"):
        return getattr(torch.Tensor, name[:-1], func)
    position = _inplace_position(func)
    if position is None:
        return func

    def out_of_place(*args: object, **kwargs: object) -> object:
        if len(args) > position:
            args = (*args[:position], False, *args[position + 1 :])
        return func(*args, **{**kwargs, "inplace": False} if "inplace" in kwargs else kwargs)

    return out_of_place


def _autograd_elementwise(op: Op) -> Plan:
    """``c = f(u) - u * f'(u)`` for an element-wise function of one input-dependent tensor,
    ``f'`` taken from autograd (so ``c`` follows the backward pass at every kink)."""
    flat, spec = tree_flatten((op.args, op.kwargs))
    positions = [i for i, a in enumerate(flat) if isinstance(a, Tensor) and op.dependent(a)]
    if len(positions) != 1:
        return _jvp(op)
    u = flat[positions[0]].detach()
    func = _out_of_place(op)
    with torch.enable_grad():
        leaf = u.clone().requires_grad_(True)
        leaves = [_detached(a) for a in flat]
        leaves[positions[0]] = leaf.clone()  # not the leaf itself: it may be written into
        args, kwargs = tree_unflatten(leaves, spec)
        z = func(*args, **kwargs)
        if not isinstance(z, Tensor) or z.shape != u.shape:
            return _jvp(op)
        (slope,) = torch.autograd.grad(z.sum(), leaf, allow_unused=True)
    slope = torch.zeros_like(u) if slope is None else slope
    return Plan([Piece(ACTIVATION, intercept=z.detach() - u * slope, elementwise=True)])


def _jvp(op: Op) -> Plan:
    """``c = f(u) - jvp(f, u, u)`` for every floating-point output, by forward-mode AD on
    a copy of the input-dependent arguments."""
    flat, spec = tree_flatten((op.args, op.kwargs))
    positions = [i for i, a in enumerate(flat) if isinstance(a, Tensor) and op.dependent(a)]
    copy = in_place(op)  # its values before the operation writes into them
    primals = tuple(flat[i].detach().clone() if copy else flat[i].detach() for i in positions)
    func = _out_of_place(op)
    dependents = len(positions)

    def f(*values: Tensor):
        leaves = [_detached(a) for a in flat]
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


_RULES: dict[str, Callable[[Op], Plan | None]] = {
    **dict.fromkeys(_BIASED, _biased),
    "batch_norm": _batch_norm,
    "hardtanh": _hardtanh_op,
    "relu6": lambda op: _hardtanh(op, 0.0, 6.0),
    "clamp": _clamp,
    "clip": _clamp,
    "clamp_min": _clamp,
    "clamp_max": _clamp,
    "silu": lambda op: _unary(op, ACTIVATION, _silu),
    "gelu": _gelu,
    "sigmoid": lambda op: _unary(op, ACTIVATION, _sigmoid),
    "tanh": lambda op: _unary(op, ACTIVATION, _tanh),
    "hardswish": lambda op: _unary(op, ACTIVATION, _hardswish),
    "hardsigmoid": lambda op: _unary(op, ACTIVATION, _hardsigmoid),
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


def label(op: Op) -> str:
    """What made a piece, for a reader: the module type when the operation is the
    innermost module's own (a leaf module), else the operation's short name."""
    if next(op.module.children(), None) is None and op.module_name != "<model>":
        return type(op.module).__name__
    return short_name(op_name(op.func))
