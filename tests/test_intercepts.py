"""SPEC 1's one rule, tangent intercepts: T-Grad exact beyond piecewise-linear networks.

Oracles: the completeness identity on the CNNs people use (random weights, small
inputs), networks whose terms are worked out by hand below, every closed-form intercept
against torch.func.jvp (and against autograd's own derivative at the kinks, which is the
convention the backward pass, and so completeness, follows).
"""

import math
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tests.nets import perturb
from tgrad.capture import Op
from tgrad.decompose import NotDecomposableError, completeness_tolerance, decompose
from tgrad.ops import plan
from tgrad.tgrad import TGrad

# -- completeness on the models people use ---------------------------------------------------

TORCHVISION = ["efficientnet_b0", "mobilenet_v3_small", "regnet_y_400mf", "convnext_tiny"]
TIMM = ["resnet18", "efficientnet_b0", "mobilenetv3_small_100"]


def _torchvision(name: str) -> nn.Module:
    torch.manual_seed(0)
    return perturb(torchvision.models.get_model(name, weights=None))


def _timm(name: str) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return perturb(timm.create_model(name, pretrained=False))


def _images(batch: int = 2, size: int = 96, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_complete(dec) -> None:
    assert (dec.gap.abs() <= completeness_tolerance(dec.logit)).all(), (dec.gap, dec.logit)
    # the layer terms are a real part of the logit, not a rounding error: without them
    # the input term alone would be off by more than the tolerance
    layers = torch.stack([t.contribution for t in dec.terms[1:]]).sum(0)
    assert (layers.abs() > completeness_tolerance(dec.logit)).all()


@pytest.mark.parametrize("name", TORCHVISION)
def test_completeness_torchvision_beyond_piecewise_linear(name):
    dec = decompose(_torchvision(name), _images(), target=[3, 7])
    _assert_complete(dec)
    kinds = {part for t in dec.terms for part in t.kind.split("+")}
    assert kinds & {"activation", "gate", "norm"}  # what piecewise-linear models lack


@pytest.mark.parametrize("name", TIMM)
def test_completeness_timm(name):
    _assert_complete(decompose(_timm(name), _images(), target=[3, 7]))


@pytest.mark.parametrize(
    "build",
    [
        lambda: _torchvision("efficientnet_b0"),
        lambda: _torchvision("convnext_tiny"),
        lambda: _timm("mobilenetv3_small_100"),
    ],
    ids=["efficientnet_b0", "convnext_tiny", "timm-mobilenetv3_small_100"],
)
def test_completeness_in_float64_below_1e_9(build):
    model = build().double()
    dec = decompose(model, _images(size=64).double(), target=[3, 7])
    assert (dec.gap.abs() <= 1e-9 * dec.logit.abs().clamp(min=1)).all(), dec.gap


# -- networks worked out by hand -----------------------------------------------------------


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def _linear(out_features: int, weight, bias) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), out_features)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def test_a_silu_network_by_hand():
    # y = w2 . silu(W1 x + b1) + b2; z = W1 x + b1, a = silu(z) = z s(z)
    w1, b1, w2, b2, x = [[1.0, -1.0], [2.0, 1.0]], [0.5, -1.0], [1.0, 2.0], 0.25, [1.0, 2.0]
    model = nn.Sequential(_linear(2, w1, b1), nn.SiLU(), _linear(1, [w2], [b2])).eval()
    z = [sum(w * v for w, v in zip(row, x, strict=True)) + b for row, b in zip(w1, b1, strict=True)]
    s = [_sigmoid(v) for v in z]
    slope = [si + zi * si * (1 - si) for zi, si in zip(z, s, strict=True)]  # silu'(z)
    g_z = [w * d for w, d in zip(w2, slope, strict=True)]  # dy/dz = w2 * silu'(z)
    g_x = [sum(w1[i][j] * g_z[i] for i in range(2)) for j in range(2)]  # W1^T dy/dz
    c = [-zi * zi * si * (1 - si) for zi, si in zip(z, s, strict=True)]  # SiLU's intercept
    expected = {
        "input": sum(xi * gi for xi, gi in zip(x, g_x, strict=True)),
        "0": sum(b * g for b, g in zip(b1, g_z, strict=True))  # the bias of layer 0 ...
        + sum(ci * w for ci, w in zip(c, w2, strict=True)),  # ... and SiLU's intercept
        "2": b2,
    }
    y = sum(w * zi * si for w, zi, si in zip(w2, z, s, strict=True)) + b2
    dec = decompose(model, torch.tensor([x]), target=0)
    terms = {t.name: t for t in dec.terms}
    assert list(terms) == ["input", "0", "2"]
    assert terms["0"].kind == "bias+activation"
    for name, value in expected.items():
        assert terms[name].contribution.item() == pytest.approx(value, rel=1e-5)
    assert dec.logit.item() == pytest.approx(y, rel=1e-6)
    assert sum(expected.values()) == pytest.approx(y, rel=1e-9)  # the identity, on paper


class Gate(nn.Module):
    """``x * sigmoid(W x + b)``: a gate whose product is this module's term."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return x * torch.sigmoid(self.lin(x))


def test_a_gate_by_hand():
    w1, b1, w2, b2, x = [[0.5, -1.0], [1.0, 0.5]], [0.2, -0.3], [2.0, -1.0], 0.1, [1.0, 2.0]
    model = nn.Sequential(Gate(_linear(2, w1, b1)), _linear(1, [w2], [b2])).eval()
    u = [sum(w * v for w, v in zip(row, x, strict=True)) + b for row, b in zip(w1, b1, strict=True)]
    s = [_sigmoid(v) for v in u]
    g_h = w2  # h = x * s, y = w2 . h + b2
    g_s = [g * xi for g, xi in zip(g_h, x, strict=True)]
    g_u = [g * si * (1 - si) for g, si in zip(g_s, s, strict=True)]
    g_x = [g_h[j] * s[j] + sum(w1[i][j] * g_u[i] for i in range(2)) for j in range(2)]
    c_sigmoid = [si - ui * si * (1 - si) for ui, si in zip(u, s, strict=True)]
    expected = {
        "input": sum(xi * g for xi, g in zip(x, g_x, strict=True)),
        "0.lin": sum(b * g for b, g in zip(b1, g_u, strict=True))
        + sum(c * g for c, g in zip(c_sigmoid, g_s, strict=True)),
        "0": -sum(xi * si * g for xi, si, g in zip(x, s, g_h, strict=True)),  # c = -a*b
        "1": b2,
    }
    dec = decompose(model, torch.tensor([x]), target=0)
    terms = {t.name: t for t in dec.terms}
    assert list(terms) == ["input", "0.lin", "0", "1"]
    assert (terms["0.lin"].kind, terms["0"].kind) == ("bias+activation", "gate")
    for name, value in expected.items():
        assert terms[name].contribution.item() == pytest.approx(value, rel=1e-5), name
    y = sum(w * xi * si for w, xi, si in zip(w2, x, s, strict=True)) + b2
    assert sum(expected.values()) == pytest.approx(y, rel=1e-9)


def test_a_layer_norm_by_hand():
    # y = w . LN(x) + b. LN(x) = gamma * n + beta, n = (x - mean) / sqrt(v + eps); its
    # tangent along x is J x = gamma * n * eps / (v + eps) (LN is scale-invariant up to
    # eps), so the input term is <J x, w> and the norm's intercept c = gamma n v/(v+eps) + beta
    x, gamma, beta, w, b, eps = [1.0, 2.0, 4.0], [1.0, 0.5, 2.0], [0.1, 0.0, -0.2], \
        [0.3, -1.0, 0.7], 0.05, 0.5  # fmt: skip
    norm = nn.LayerNorm(3, eps=eps)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor(gamma))
        norm.bias.copy_(torch.tensor(beta))
    model = nn.Sequential(norm, _linear(1, [w], [b])).eval()
    mean = sum(x) / 3
    v = sum((xi - mean) ** 2 for xi in x) / 3
    n = [(xi - mean) / math.sqrt(v + eps) for xi in x]
    expected = {
        "input": sum(
            wi * gi * ni * eps / (v + eps) for wi, gi, ni in zip(w, gamma, n, strict=True)
        ),
        "0": sum(
            wi * (gi * ni * v / (v + eps) + bi)
            for wi, gi, ni, bi in zip(w, gamma, n, beta, strict=True)
        ),
        "1": b,
    }
    dec = decompose(model, torch.tensor([x]), target=0)
    terms = {t.name: t for t in dec.terms}
    assert terms["0"].kind == "norm"
    for name, value in expected.items():
        assert terms[name].contribution.item() == pytest.approx(value, rel=1e-5, abs=1e-7), name


# -- every closed form against forward-mode AD ---------------------------------------------


def _op(func, u, *args, others=(), **kwargs) -> Op:
    dependents = {id(u), *(id(o) for o in others)}
    return Op(func, (u, *args), kwargs, nn.Identity(), "m", 0, lambda v: id(v) in dependents)


def _intercept(op: Op, output: torch.Tensor) -> torch.Tensor:
    found = plan(op)
    total = torch.zeros_like(output)
    for piece in [] if found is None else found.pieces([output]):
        total = piece.add_to(torch.ones_like(output), total)  # C for dy/dz = 1: c itself
    return total


def _jvp_intercept(f, *primals) -> torch.Tensor:
    value, tangent = torch.func.jvp(f, primals, primals)
    return value - tangent


# both sides of every kink (0, +-1, +-3, 0.5, 6: the bounds used below) and beyond, no
# point on one (there forward- and reverse-mode conventions may differ; see the next test)
_U = torch.cat([torch.linspace(-8, 8, 1601), torch.tensor([-3.01, -2.99, 2.99, 3.01, 5.99, 6.01])])
_KINK_POINTS = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0, 6.0])
_U = _U[(_U[:, None] - _KINK_POINTS).abs().min(1).values > 1e-3]


ELEMENTWISE = {  # name -> (the operation, its other arguments)
    "silu": (F.silu, ()),
    "gelu": (F.gelu, ()),
    "sigmoid": (torch.sigmoid, ()),
    "tanh": (torch.tanh, ()),
    "hardswish": (F.hardswish, ()),
    "hardsigmoid": (F.hardsigmoid, ()),
    "relu6": (F.relu6, ()),
    "hardtanh": (F.hardtanh, (-1.0, 1.0)),
    "clamp": (torch.clamp, (-1.0, 0.5)),
    "pow": (torch.pow, (3,)),
    "reciprocal": (torch.reciprocal, ()),
    "exp": (torch.exp, ()),
    "softplus": (F.softplus, ()),
    "mish": (F.mish, ()),
    "elu": (F.elu, ()),
}


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_element_wise_closed_forms_equal_the_jvp_intercept(name):
    func, extra = ELEMENTWISE[name]
    u = _U.clone()
    got = _intercept(_op(func, u, *extra), func(u, *extra))
    expected = _jvp_intercept(lambda v: func(v, *extra), u)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_roots_equal_the_jvp_intercept():
    u = _U.abs() + 0.1
    for func in (torch.sqrt, torch.rsqrt):
        torch.testing.assert_close(_intercept(_op(func, u), func(u)), _jvp_intercept(func, u))


KINKS = torch.tensor([-6.0, -3.0, -1.0, 0.0, 0.5, 1.0, 3.0, 6.0, 7.0])


@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid", "relu6", "hardtanh", "clamp"])
def test_at_the_kinks_the_intercept_follows_the_backward_pass(name):
    # what completeness needs is c = f(u) - u f'(u) with the f' autograd uses
    func, extra = ELEMENTWISE[name]
    u = KINKS.clone().requires_grad_(True)
    (slope,) = torch.autograd.grad(func(u, *extra).sum(), u)
    u = u.detach()
    got = _intercept(_op(func, u, *extra), func(u, *extra))
    torch.testing.assert_close(got, func(u, *extra) - u * slope, rtol=0, atol=1e-6)


def _pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 1, 1, generator=g) + 2


@pytest.mark.parametrize("name", ["mul", "div", "rdiv", "matmul"])
def test_products_and_quotients_equal_the_jvp_intercept(name):
    a, b = _pair()
    if name == "mul":  # a gate: both input-dependent
        op, f = _op(torch.mul, a, b, others=(b,)), torch.mul
    elif name == "div":
        op, f = _op(torch.div, a, b, others=(b,)), torch.div
    elif name == "rdiv":  # a constant over an input-dependent tensor
        op, f = _op(torch.Tensor.__rtruediv__, b, 2.0), lambda v: 2.0 / v
        a = b
    else:
        a, b = a.flatten(2), a.flatten(2).transpose(1, 2)
        op, f = _op(torch.matmul, a, b, others=(b,)), torch.matmul
    if name in ("mul", "div", "matmul"):
        expected = _jvp_intercept(f, a, b)
        output = f(a, b)
    else:
        expected, output = _jvp_intercept(f, a), f(a)
    torch.testing.assert_close(_intercept(op, output), expected, rtol=1e-5, atol=1e-5)


NORMS = {
    "layer_norm": (F.layer_norm, lambda u: ((5,), torch.rand(5) + 0.5, torch.randn(5), 1e-3)),
    "group_norm": (F.group_norm, lambda u: (2, torch.rand(4) + 0.5, torch.randn(4), 1e-3)),
    "instance_norm": (
        F.instance_norm,
        lambda u: (None, None, torch.rand(4) + 0.5, torch.randn(4), True, 0.1, 1e-3),
    ),
    "rms_norm": (F.rms_norm, lambda u: ((5,), torch.rand(5) + 0.5, 1e-3)),
    "batch_norm": (
        F.batch_norm,
        lambda u: (
            torch.randn(4),
            torch.rand(4) + 0.5,
            torch.rand(4),
            torch.randn(4),
            False,
            0.1,
            1e-3,
        ),
    ),
}


@pytest.mark.parametrize("name", list(NORMS))
def test_normalisations_equal_the_jvp_intercept(name):
    func, extra = NORMS[name]
    torch.manual_seed(0)
    u = torch.randn(3, 4, 5, 5) * 2 + 1
    args = extra(u)
    got = _intercept(_op(func, u, *args), func(u, *args))
    torch.testing.assert_close(got, _jvp_intercept(lambda v: func(v, *args), u), rtol=1e-4,
                               atol=1e-5)  # fmt: skip


def test_biased_operations_have_their_bias_as_intercept():
    torch.manual_seed(0)
    conv, linear = nn.Conv2d(3, 4, 3), nn.Linear(5, 2)
    u, v = torch.randn(2, 3, 6, 6), torch.randn(2, 5)
    for f, w in ((F.conv2d, conv), (F.linear, linear)):
        x = u if f is F.conv2d else v
        got = _intercept(_op(f, x, w.weight, w.bias), f(x, w.weight, w.bias))
        expected = _jvp_intercept(lambda t, f=f, w=w: f(t, w.weight.detach(), w.bias.detach()), x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# -- what is exact, what is refused, what warns --------------------------------------------


class Quirky(nn.Module):
    """Sort-based pooling, an argmax-indexed gather and a rounded, detached constant."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        h = self.conv(x)
        h = h + h.round().detach()  # a locally constant value: the add's intercept
        flat = h.flatten(2)
        top = flat.sort(dim=2, descending=True).values[..., :5].mean(2)  # [B,6] sort pooling
        index = top.argmax(1, keepdim=True)  # an argmax picks which channels to read
        picked = torch.cat([top.gather(1, index), top[:, :2]], 1)  # [B,3]
        return self.fc(torch.relu(picked))


def test_sort_pooling_argmax_gather_and_a_detached_round_are_exact():
    torch.manual_seed(0)
    model = Quirky().eval()
    dec = decompose(model, _images(size=12) * 3)
    assert (dec.gap.abs() <= completeness_tolerance(dec.logit)).all(), dec.gap
    terms = {t.name: t for t in dec.terms}
    # the rounded constant belongs to the model's own forward, where the add runs
    assert terms["<model>"].kind == "bias"
    assert terms["<model>"].contribution.abs().max() > 1e-3


class StraightThrough(torch.autograd.Function):
    """Round in the forward, the identity in the backward: a straight-through estimator."""

    @staticmethod
    def forward(ctx, x):
        return x.round()

    @staticmethod
    def backward(ctx, grad):
        return grad


class Quantised(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(StraightThrough.apply(self.conv(x) * 2)).mean((2, 3)))


def test_a_straight_through_estimator_adds_up_but_warns():
    torch.manual_seed(0)
    model = Quantised().eval()
    with pytest.warns(UserWarning, match="custom autograd.Function StraightThrough"):
        dec = decompose(model, _images(size=8))
    # the identity holds for the Jacobian its backward uses (here the identity)
    assert (dec.gap.abs() <= completeness_tolerance(dec.logit)).all(), dec.gap


def test_train_mode_dropout_inside_an_eval_model_is_refused_by_name():
    model = _torchvision("efficientnet_b0")
    model.classifier[0].train()
    with pytest.raises(NotDecomposableError, match=r"classifier\.0 \(Dropout\): in training"):
        decompose(model, _images(size=64))
    model.eval()
    model.features[2][0].stochastic_depth.train()
    with pytest.raises(NotDecomposableError, match=r"stochastic_depth \(StochasticDepth\)"):
        decompose(model, _images(size=64))


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


class Exploding(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_models_and_hooks_are_left_bit_identical_also_when_a_pass_raises():
    model = _torchvision("mobilenet_v3_small")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _images(size=64)
    output = model(x).detach()
    TGrad(model)(x)
    model.features[3].block.append(Exploding())
    with pytest.raises(RuntimeError, match="boom"):
        TGrad(model)(x)
    del model.features[3].block[-1]
    assert _hooks(model) == 0 and torch._C._len_torch_function_stack() == 0
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert torch.equal(model(x), output)


def test_two_threads_explaining_at_once_give_the_sequential_answers():
    model = _torchvision("efficientnet_b0")
    explain = TGrad(model)
    inputs = [_images(batch=1, size=64, seed=s) for s in range(4)]
    sequential = [explain(x) for x in inputs]
    results: dict[int, object] = {}

    def run(i: int) -> None:
        results[i] = explain(inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, expected in enumerate(sequential):
        got = results[i]
        assert torch.equal(got.saliency, expected.saliency)
        assert [t.name for t in got.terms] == [t.name for t in expected.terms]
        assert all(
            torch.equal(a.contribution, b.contribution)
            for a, b in zip(got.terms, expected.terms, strict=True)
        )


def test_no_warning_on_the_zoo_style_models():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decompose(_torchvision("convnext_tiny"), _images(batch=1, size=64))


# -- piecewise-linear models: the paper's terms, unchanged -----------------------------------


def module_terms(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> dict:
    """The paper's decomposition written with module hooks, independently of the engine:
    ``b * dy/dz`` at every biased leaf module (BatchNorm's folded shift), plus ``6 *
    [z >= 6] * dy/da`` of a ReLU6 added to the term of the module feeding it.

    Each hooked output is replaced by a copy, so that a later in-place operation (ResNet's
    ReLU) changes the copy and the gradient taken is the one of the value the module
    returned. Returns name -> (contribution [B], map [B,h,w] or None).
    """
    from tgrad.decompose import SATURATING, bias_of

    calls, names = [], {m: n for n, m in model.named_modules()}

    def keep(module, inputs, output):
        copy = output.clone()
        calls.append((module, inputs[0], output, copy))
        return copy

    hooked = [m for m in model.modules() if isinstance(m, SATURATING)
              or (not list(m.children()) and bias_of(m) is not None)]  # fmt: skip
    handles = [m.register_forward_hook(keep) for m in hooked]
    try:
        x_in = x.clone().requires_grad_(True)
        y = model(x_in).gather(1, target[:, None]).sum()
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(y, [out for _, _, out, _ in calls], allow_unused=True)
    terms, by_copy = {}, {}
    for (module, inp, out, copy), g in zip(calls, grads, strict=True):
        if g is None:
            continue
        if isinstance(module, SATURATING):
            c = module.max_val * (out >= module.max_val) * g
            host = by_copy.get(id(inp))
            name = host if host is not None else names[module]
            terms[name] = terms.get(name, 0) + c
        else:
            b = bias_of(module).detach()
            terms[names[module]] = (b if isinstance(module, nn.Linear) else
                                    b.view(1, -1, *[1] * (g.dim() - 2))) * g  # fmt: skip
            by_copy[id(copy)] = names[module]
    return {
        name: (c.flatten(1).sum(1), c.clamp(min=0).sum(1) if c.dim() == 4 else None)
        for name, c in terms.items()
    }


PIECEWISE_LINEAR = ["efficientnet_lite0", "vgg16", "resnet50", "densenet121", "mobilenet_v2",
                    "alexnet"]  # fmt: skip


@pytest.mark.parametrize("name", PIECEWISE_LINEAR)
def test_on_piecewise_linear_models_the_terms_are_the_papers(name):
    # the same products and sums in the same order: equal up to float rounding (the issue
    # asks 1e-6; a term whose total is near zero is compared in absolute terms)
    if name == "efficientnet_lite0":
        from tgrad.images import load_image
        from tgrad.models import load_model

        lite = load_model(name)
        model = lite.module
        x = torch.stack([lite.preprocessing(load_image(f"assets/{p}"))
                         for p in ("coffee.jpg", "rocket.jpg")])  # fmt: skip
    else:
        model, x = _torchvision(name), _images(size=64, seed=4)
    dec = decompose(model, x)
    expected = module_terms(model, x, dec.record.target)
    got = {t.name: t for t in dec.terms[1:]}
    assert list(got) == list(expected)
    assert all("activation" not in t.kind and "gate" not in t.kind for t in got.values())
    for term_name, (total, layer_map) in expected.items():
        term = got[term_name]
        scale = dec.logit.abs().clamp(min=1)
        assert ((term.contribution - total).abs() <= 1e-6 * scale).all(), term_name
        assert (term.map is None) == (layer_map is None), term_name
        if layer_map is not None:
            torch.testing.assert_close(term.map, layer_map.detach(), rtol=1e-6, atol=1e-6 *
                                       float(layer_map.abs().max()))  # fmt: skip


def test_batchnorm_shifts_follow_changed_statistics():
    # the folded shift is kept between passes only while no statistic changes
    from tests.nets import small_cnn

    model = small_cnn()
    x = _images(size=16)
    before = {t.name: t.contribution for t in decompose(model, x, target=1).terms}
    with torch.no_grad():
        model.bn2.running_mean.add_(0.5)  # in place: its version counter moves
    after = decompose(model, x, target=1)
    assert (after.gap.abs() <= completeness_tolerance(after.logit)).all()
    assert not torch.equal({t.name: t.contribution for t in after.terms}["bn2"], before["bn2"])
    model.bn2.running_var = model.bn2.running_var * 2  # a new tensor
    again = decompose(model, x, target=1)
    assert (again.gap.abs() <= completeness_tolerance(again.logit)).all()
