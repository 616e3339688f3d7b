"""The decomposition: hand-computed toy networks and the completeness identity."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tests.nets import perturb, small_cnn
from tgrad.capture import capture
from tgrad.decompose import (
    NotDecomposableError,
    TermCollector,
    bias_of,
    completeness_tolerance,
    decompose,
)


def by_name(dec):
    return {t.name: t for t in dec.terms}


def test_two_layer_relu_network_by_hand():
    # y = w2 . relu(W1 x + b1) + b2 with x = (1, 2):
    # z1 = (1-2+0.5, 2+2-1) = (-0.5, 3), relu -> (0, 3), y = 2*3 + 0.25 = 6.25
    # dy/dz1 = (0, 2), dy/dx = W1^T (0, 2) = (4, 2)
    # input term 1*4 + 2*2 = 8; first bias 0.5*0 + (-1)*2 = -2; last bias 0.25
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
        model[0].bias.copy_(torch.tensor([0.5, -1.0]))
        model[2].weight.copy_(torch.tensor([[1.0, 2.0]]))
        model[2].bias.copy_(torch.tensor([0.25]))
    x = torch.tensor([[1.0, 2.0]])
    dec = decompose(model, x, target=0, keep_elementwise=True)
    terms = by_name(dec)
    assert dec.logit.item() == pytest.approx(6.25)
    assert terms["input"].contribution.item() == pytest.approx(8.0)
    assert terms["0"].contribution.item() == pytest.approx(-2.0)
    assert terms["2"].contribution.item() == pytest.approx(0.25)
    assert torch.equal(terms["input"].elementwise, torch.tensor([[4.0, 4.0]]))
    assert terms["0"].map is None  # not spatial: a share of the logit, no map
    assert abs(dec.gap.item()) < 1e-6


def test_relu6_saturation_is_a_bias_merged_into_its_layer():
    # z = 2x + 1 = 9 for x = 4: saturated, so y = 3 * 6 = 18 comes entirely from the
    # constant 6 (dy/dx = 0 and the Linear bias' gradient is 0).
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU6(), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[0].bias.fill_(1.0)
        model[2].weight.fill_(3.0)
    dec = decompose(model, torch.tensor([[4.0], [1.0]]), target=0)
    terms = by_name(dec)
    assert list(terms) == ["input", "0"]  # ReLU6's term joined the Linear's
    assert terms["0"].kind == "bias+saturation" and terms["0"].source == "Linear+ReLU6"
    # x = 4: 6 * 3 = 18 from the saturation; x = 1: z = 3, unsaturated: bias 1 * 3 = 3
    assert terms["0"].contribution.tolist() == pytest.approx([18.0, 3.0])
    assert terms["input"].contribution.tolist() == pytest.approx([0.0, 6.0])
    assert dec.logit.tolist() == pytest.approx([18.0, 9.0])


def test_hardtanh_low_saturation_without_a_biased_producer():
    # Hardtanh(-1, 1) fed by a bias-free Linear: a term of its own, -1 where z <= -1.
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Hardtanh(-1.0, 1.0), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model[2].weight.copy_(torch.tensor([[5.0, 7.0]]))
        model[2].bias.zero_()
    # x = (-3, 0.5): unit 0 saturates low (-1), unit 1 linear. y = -5 + 3.5 = -1.5
    dec = decompose(model, torch.tensor([[-3.0, 0.5]]), target=0)
    terms = by_name(dec)
    assert terms["1"].kind == "saturation" and terms["1"].source == "Hardtanh"
    assert terms["1"].contribution.item() == pytest.approx(-5.0)
    assert terms["input"].contribution.item() == pytest.approx(3.5)
    assert dec.logit.item() == pytest.approx(-1.5)


def test_batchnorm_bias_is_the_folded_shift():
    bn = nn.BatchNorm2d(2).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25]))
        bn.weight.copy_(torch.tensor([2.0, 3.0]))
        bn.bias.copy_(torch.tensor([0.5, 0.0]))
    eps = bn.eps
    expected = torch.tensor([0.5 - 2.0 * 1.0 / (4.0 + eps) ** 0.5, 3.0 * 2.0 / (0.25 + eps) ** 0.5])
    assert torch.allclose(bias_of(bn), expected)
    x = torch.randn(3, 2, 4, 4)
    # the folded affine map reproduces BatchNorm exactly
    scale = bn.weight / torch.sqrt(bn.running_var + eps)
    assert torch.allclose(bn(x), x * scale[:, None, None] + expected[:, None, None], atol=1e-6)


def test_saturation_matters_in_the_small_cnn():
    model = small_cnn()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    dec = decompose(model, x)
    assert (dec.gap.abs() <= completeness_tolerance(dec.logit)).all()
    # the BN term alone (without the saturated constants) misses a real part of y
    grads = {c.name: c for c in capture(model, x, None, {model.bn2: None}).calls}
    bn_only = (bias_of(model.bn2).view(1, -1, 1, 1) * grads["bn2"].grad).flatten(1).sum(1)
    assert (by_name(dec)["bn2"].contribution - bn_only).abs().max() > 0.1


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "densenet121", "alexnet", "mobilenet_v2"])
def test_completeness_torchvision(name):
    torch.manual_seed(0)
    model = perturb(getattr(torchvision.models, name)(weights=None))
    # 64 px: completeness is structural (every layer of each net runs at any input size)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    dec = decompose(model, x, target=[1, 2, 3, 4])
    assert (dec.gap.abs() <= completeness_tolerance(dec.logit)).all(), dec.gap
    # the bias terms are a real part of the logit, not a rounding error
    bias = torch.stack([t.contribution for t in dec.terms[1:]]).sum(0)
    assert bias.abs().min() > 1e-3


class Swishy(nn.Module):
    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = act
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("act", [nn.SiLU(), nn.GELU(), nn.Hardswish(), nn.Tanh()])
def test_a_smooth_activation_joins_the_term_of_the_conv_feeding_it(act):
    # SPEC 1: the activation's tangent intercept c; SPEC 2: added to the conv's term.
    # The oracle: C = b * dy/dz + c(z) * dy/da, with c = f(z) - z f'(z) from autograd.
    torch.manual_seed(0)
    model = Swishy(act).eval()
    x = torch.randn(2, 3, 8, 8) * 3
    dec = decompose(model, x, target=1)
    terms = by_name(dec)
    assert list(terms) == ["input", "conv", "fc"]
    assert terms["conv"].kind == "bias+activation"
    assert terms["conv"].source == f"Conv2d+{type(act).__name__}"
    z = model.conv(x).detach().requires_grad_(True)
    a = act(z)
    y = model.fc(a.mean((2, 3)))[:, 1].sum()
    g_z, g_a = torch.autograd.grad(y, (z, a), retain_graph=True)
    (slope,) = torch.autograd.grad(act(z).sum(), z)
    c = act(z).detach() - z.detach() * slope
    expected = (model.conv.bias.view(1, -1, 1, 1) * g_z + c * g_a).flatten(1).sum(1)
    torch.testing.assert_close(terms["conv"].contribution, expected.detach(), rtol=1e-5, atol=1e-6)
    assert (dec.gap.abs() <= completeness_tolerance(dec.logit)).all()


def test_refuses_training_mode_batchnorm():
    with pytest.raises(NotDecomposableError, match=r"bn2 \(BatchNorm2d\): in training mode"):
        decompose(small_cnn().train(), torch.randn(2, 3, 16, 16))


class FunctionalSilu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.silu(self.conv(x)).mean((2, 3)))


def test_a_missed_intercept_is_caught_by_the_gap(monkeypatch):
    # The gap is the second line of defence: with SiLU's closed form made to say
    # "nothing here", the terms miss its intercept and strict mode refuses the result.
    import tgrad.ops

    torch.manual_seed(0)
    model = FunctionalSilu().eval()
    x = torch.randn(2, 3, 8, 8) * 3
    assert decompose(model, x).gap.abs().max() < 1e-5
    monkeypatch.setitem(tgrad.ops._RULES, "silu", lambda op: None)
    with pytest.raises(NotDecomposableError, match="completeness gap"):
        decompose(model, x)
    dec = decompose(model, x, strict=False)  # opt-in: terms plus the measured gap
    assert (dec.gap.abs() > completeness_tolerance(dec.logit)).any()


def keep_output(module, inputs, output):
    return output.clone()  # a float activation, as a CAM method keeps it


@pytest.mark.parametrize("net", ["small_cnn", "mobilenet_v2", "hardtanh"])
def test_term_collector_shares_a_pass_that_watches_every_module(net):
    # Another method's watch merged in: every module watched, every output kept as a
    # float tensor (BatchNorm and ReLU6 included). Roles come from the module types, the
    # saturation masks from the kept outputs: the terms are those of decompose().
    if net == "small_cnn":
        model, x = (
            small_cnn(),
            torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(9)),
        )
    elif net == "mobilenet_v2":
        torch.manual_seed(0)
        model = perturb(torchvision.models.mobilenet_v2(weights=None))
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(9)) * 3
    else:
        model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Hardtanh(-1.0, 1.0), nn.Linear(2, 1))
        with torch.no_grad():
            model[0].weight.copy_(torch.eye(2))
            model[2].weight.copy_(torch.tensor([[5.0, 7.0]]))
            model[2].bias.fill_(0.5)
        x = torch.tensor([[-3.0, 0.5], [2.0, -0.25]])
    expected = decompose(model, x, target=0)
    collector = TermCollector(keep_elementwise=False)
    watch = {m: keep_output for m in model.modules()}
    record = capture(model, x, 0, watch, on_op=collector.on_op, on_unseen=collector.on_unseen)
    terms = collector.finish(record)
    assert [(t.name, t.kind) for t in terms] == [(t.name, t.kind) for t in expected.terms]
    for got, want in zip(terms, expected.terms, strict=True):
        torch.testing.assert_close(got.contribution, want.contribution, rtol=1e-5, atol=1e-5)
    total = torch.stack([t.contribution for t in terms]).sum(0)
    torch.testing.assert_close(total, record.logit, rtol=1e-4, atol=1e-4)
    if net == "hardtanh":  # by hand: -1 * 5 = -5 (low), then 1 * 5 = 5 (high)
        assert terms[1].contribution.tolist() == pytest.approx([-5.0, 5.0])
