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

from tgrad.ops import closed
from tgrad.ops.base import (
    ACTIVATION,
    BIAS,
    GATE,
    NORM,
    ROLES,
    SATURATION,
    Piece,
    Plan,
    Unsupported,
    arg,
    batchnorm_shift,
    in_place,
    short_name,
)
from tgrad.ops.closed import RULES as _RULES
from tgrad.ops.closed import normalized_shape
from tgrad.ops.general import autograd_elementwise, jvp
from tgrad.watch import RANDOM, Op, op_name

__all__ = [
    "ACTIVATION",
    "BIAS",
    "GATE",
    "NORM",
    "ROLES",
    "SATURATION",
    "Piece",
    "Plan",
    "Unsupported",
    "batchnorm_shift",
    "in_place",
    "is_random",
    "label",
    "normalized_shape",
    "plan",
    "short_name",
]

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
        return bool(arg(op, 2, "training", True)) and bool(arg(op, 1, "p", 0.5))
    if op_short == "rrelu":
        return bool(arg(op, 3, "training", False))
    return False


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
        return None if name not in ("max", "min") else closed.max_min(op)
    if name in _AFFINE:
        return closed.affine(op)
    if name in _HOMOGENEOUS_UNARY:
        return closed.homogeneous(op, _HOMOGENEOUS_UNARY[name])
    if name in _ELEMENTWISE:
        return autograd_elementwise(op)
    return jvp(op)


def label(op: Op) -> str:
    """What made a piece, for a reader: the module type when the operation is that
    module's own (a leaf module, or one named for it: timm's ``BatchNormAct2d`` runs
    ``batch_norm``), else the operation's short name."""
    name = short_name(op_name(op.func))
    kind = type(op.module).__name__
    if op.module_name != "<model>" and (
        next(op.module.children(), None) is None or name.replace("_", "") in kind.lower()
    ):
        return kind
    return name
