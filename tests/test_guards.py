"""The engine's guards (issue "Hardening", items 6-9): the model checked on every call and
never changed, inputs and targets validated, maps only on channels-first grids, and the
forward watched operation by operation."""

import importlib
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tgrad
from tests.nets import small_cnn
from tgrad.capture import capture
from tgrad.decompose import (
    Decomposition,
    NotDecomposableError,
    completeness_tolerance,
    decompose,
)
from tgrad.tgrad import TGrad


def image(batch: int = 2, seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


# -- item 6: checked on every call, before the forward; the model never changes -------------


def test_training_mode_set_after_construction_is_refused_before_the_forward():
    model = small_cnn()
    explain = TGrad(model)
    model.train()
    before = state_of(model)  # running_mean, running_var, num_batches_tracked
    with pytest.raises(NotDecomposableError, match=r"bn2 \(BatchNorm2d\): in training mode"):
        explain(image())
    assert_same_state(model, before)


def test_training_mode_dropout_is_refused_instead_of_a_random_saliency():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 14 * 14, 3)
    ).eval()
    explain = TGrad(model)
    model.train()
    with pytest.raises(NotDecomposableError, match=r"2 \(Dropout\): in training mode"):
        explain(image())


def test_non_strict_never_updates_batchnorm_statistics():
    model = small_cnn().train()
    before = state_of(model)
    with pytest.raises(NotDecomposableError, match="would update its running statistics"):
        TGrad(model, strict=False)(image())
    assert_same_state(model, before)


# -- item 7: inputs and targets validated --------------------------------------------------


def test_a_non_image_input_is_refused_by_shape():
    model = nn.Sequential(nn.Linear(10, 2))
    with pytest.raises(ValueError, match=r"T-Grad needs images \[B,C,H,W\], got shape \(2, 10\)"):
        TGrad(model)(torch.randn(2, 10))


def test_a_nan_input_is_refused_even_where_the_gap_is_nan():
    model = small_cnn()
    x = image()
    x[1, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite values"):
        TGrad(model)(x)
    with pytest.raises(ValueError, match="non-finite"):
        decompose(model, x)


def test_a_nan_gap_fails_strict_mode():
    # finite input, infinite logit: the gap is inf - inf = NaN, which no "gap > tol" flags
    model = nn.Sequential(nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.fill_(3e38)
        model[0].bias.zero_()
    with pytest.raises(NotDecomposableError, match="completeness gap nan"):
        decompose(model, torch.tensor([[10.0, 10.0]]), target=0)


@pytest.mark.parametrize("target", [1.7, True, 2.0, [1, 0.5], torch.tensor([True, False])])
def test_a_target_must_be_an_integer_class(target):
    with pytest.raises(ValueError, match="integer class index"):
        TGrad(small_cnn())(image(), target=target)


@pytest.mark.parametrize("upto", [-1, 3, 100])
def test_cumulative_refuses_positions_outside_the_spatial_terms(upto):
    result = TGrad(small_cnn())(image())
    assert [t.name for t in result.spatial_terms] == ["input", "conv1", "bn2"]
    with pytest.raises(IndexError, match=rf"upto must be .* 0\.\.2 .*got {upto}"):
        result.cumulative(upto)


def test_inference_mode_gives_a_clear_error():
    explain = TGrad(small_cnn())
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        explain(image())
    with torch.inference_mode():
        x = image()
    with pytest.raises(ValueError, match=r"inside torch.inference_mode\(\).*x.clone\(\)"):
        explain(x)


# -- item 8 (SPEC 2 as it now reads): maps on [B,C,h,w] and on channels-last [B,h,w,C] ------


class ChannelsLast(nn.Module):
    """A Linear on [B,H,W,C] features: its output [B,H,W,K] is a channels-last map."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Linear(3, 5)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(self.relu(self.mix(x.permute(0, 2, 3, 1))).mean((1, 2)))


def test_a_linear_on_channels_last_features_has_its_map_on_the_h_w_grid():
    torch.manual_seed(0)
    model = ChannelsLast().eval()
    x = image(batch=2, seed=3, size=6)
    result = TGrad(model)(x, target=1)
    terms = {t.name: t for t in result.terms}
    assert terms["fc"].map is None  # [B,K]: no grid
    assert [t.name for t in result.spatial_terms] == ["input", "mix"]
    # by hand: C = b * dy/dz on [B,H,W,5]; S sums ReLU(C) over the last (channel) axis
    x_in = x.clone().requires_grad_(True)
    z = model.mix(x_in.permute(0, 2, 3, 1))
    y = model.fc(model.relu(z).mean((1, 2)))[:, 1].sum()
    grad, g_z = torch.autograd.grad(y, (x_in, z))
    c_mix = model.mix.bias * g_z
    assert terms["mix"].grid == (6, 6)
    torch.testing.assert_close(terms["mix"].map, c_mix.clamp(min=0).sum(-1).detach())

    def phi_score(c: torch.Tensor, channels: int) -> torch.Tensor:
        s = c.clamp(min=0).sum(channels)
        return s / s.sum((1, 2), keepdim=True) * c.flatten(1).sum(1).clamp(min=0)[:, None, None]

    expected = phi_score(x * grad, 1) + phi_score(c_mix.detach(), -1)
    torch.testing.assert_close(result.saliency, expected, rtol=1e-5, atol=1e-7)
    assert (result.gap.abs() <= completeness_tolerance(result.logit)).all()


# -- item 9 (SPEC 1 as it now reads): every operation watched; smooth ones are exact --------


class FunctionalSilu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.silu(self.conv(x)).mean((2, 3)))


def test_functional_silu_is_exact_through_its_intercept():
    torch.manual_seed(0)
    model = FunctionalSilu().eval()
    x = image(seed=0, size=8) * 3
    dec = decompose(model, x)
    assert (dec.gap.abs() <= completeness_tolerance(dec.logit)).all()
    conv = {t.name: t for t in dec.terms}["conv"]
    assert conv.kind == "bias+activation" and conv.source == "Conv2d+silu"


class SamePad(nn.Module):
    """TensorFlow-style "SAME" padding for a 3x3 kernel with stride 2: zeros after."""

    def forward(self, x):
        return F.pad(x, (0, 1, 0, 1))


def test_a_parameter_free_padding_module_is_accepted():
    torch.manual_seed(0)
    model = nn.Sequential(
        SamePad(), nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)
    ).eval()
    x = image()
    result = TGrad(model)(x)
    assert (result.gap.abs() <= completeness_tolerance(result.logit)).all()
    assert [t.name for t in result.terms] == ["input", "1", "4"]
    assert result.terms[1].grid == (8, 8)


def two_layer(activation: nn.Module) -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2), activation, nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
        model[0].bias.copy_(torch.tensor([0.5, -1.0]))
        model[2].weight.copy_(torch.tensor([[1.0, 2.0]]))
        model[2].bias.copy_(torch.tensor([0.25]))
    return model.eval()


def prelu(slopes: list[float]) -> nn.PReLU:
    module = nn.PReLU(2)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(slopes))
    return module


@pytest.mark.parametrize(
    ("activation", "slope"), [(nn.LeakyReLU(0.1), 0.1), (prelu([0.2, 0.7]), 0.2)]
)
def test_leaky_relu_and_prelu_are_piecewise_linear_without_bias(activation, slope):
    # x = (1, 2), slope s on unit 0: z1 = (-0.5, 3), a = (-0.5 s, 3), y = -0.5 s + 6.25;
    # dy/dz1 = (s, 2), dy/dx = W1^T (s, 2) = (s + 4, 2 - s): input term 1 (s + 4) +
    # 2 (2 - s) = 8 - s; first bias (0.5, -1) . (s, 2) = 0.5 s - 2; last bias 0.25
    dec = decompose(two_layer(activation), torch.tensor([[1.0, 2.0]]), target=0)
    terms = {t.name: t.contribution.item() for t in dec.terms}
    assert dec.logit.item() == pytest.approx(-0.5 * slope + 6.25)
    assert terms["input"] == pytest.approx((slope + 4) + 2 * (2 - slope))  # 8 - s
    assert terms["0"] == pytest.approx(0.5 * slope - 2.0)
    assert terms["2"] == pytest.approx(0.25)
    assert list(terms) == ["input", "0", "2"]  # no term of their own


class Square(nn.Module):
    def forward(self, x):
        return x * x


class Shift(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.full((1, 4, 1, 1), 0.5))

    def forward(self, x):
        return x + self.shift


class Block(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.inner = inner

    def forward(self, x):
        return self.inner(self.conv(x))


def wrapped(inner: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), Block(inner), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()


@pytest.mark.parametrize(
    ("inner", "name", "kind"),
    [
        (Square(), "1.inner", "gate"),  # x * x: a product of two input-dependent tensors
        (Shift(), "1.inner", "bias"),  # a constant added, owned by no biased module
        (nn.GELU(), "1.conv", "bias+activation"),  # joins the conv feeding it
        (nn.LayerNorm([4, 6, 6]), "1.inner", "norm"),
        (nn.Hardswish(), "1.conv", "bias+activation"),
    ],
)
def test_every_operation_is_exact_and_named_by_its_innermost_module(inner, name, kind):
    model = wrapped(inner)
    dec = decompose(model, image(size=8))
    assert (dec.gap.abs() <= completeness_tolerance(dec.logit)).all()
    assert {t.name: t.kind for t in dec.terms}[name] == kind


class NoisyBlock(nn.Module):
    """Functional dropout: F.dropout's training flag defaults to True."""

    def forward(self, x):
        return F.dropout(x, 0.5)


class BatchStatistics(nn.Module):
    def forward(self, x):
        return F.batch_norm(x, None, None, training=True)


class Noise(nn.Module):
    def forward(self, x):
        return x + 0.1 * torch.randn_like(x)


class RandomPath(nn.Module):
    """Stochastic depth as written by hand: a random mask made without the input."""

    def forward(self, x):
        return x * (torch.rand(x.shape[0], 1, 1, 1) < 0.5)


@pytest.mark.parametrize(
    ("inner", "message"),
    [
        (
            NoisyBlock(),
            r"1\.inner \(NoisyBlock\) calls torch\.nn\.functional\.dropout, which draws",
        ),
        (Noise(), r"1\.inner \(Noise\) calls torch\.randn_like, which draws random numbers"),
        (RandomPath(), r"1\.inner \(RandomPath\) calls torch\.rand, which draws random"),
        (
            BatchStatistics(),
            r"1\.inner \(BatchStatistics\) calls .*batch_norm, which normalises "
            "with the statistics of the batch",
        ),
    ],
)
def test_randomness_and_batch_statistics_are_refused_by_operation_and_module(inner, message):
    model = wrapped(inner)
    with pytest.raises(NotDecomposableError, match=message):
        TGrad(model)(image(size=8))
    TGrad(model, strict=False)(image(size=8))  # strict=False runs anyway, with its gap


def test_the_guard_is_gone_after_a_refused_call():
    model = wrapped(Noise())
    with pytest.raises(NotDecomposableError):
        decompose(model, image(size=8))
    assert torch._C._len_torch_function_stack() == 0
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    F.gelu(torch.ones(1))  # no check outside the pass
    assert decompose(small_cnn(), image()).terms  # the next pass is watched afresh


def test_capture_without_on_op_watches_nothing():
    model = wrapped(Noise())
    record = capture(model, image(size=8), 0)
    assert record.logits.shape == (2, 2)


# -- while in there ------------------------------------------------------------------------


def test_tgrad_decompose_is_the_module_and_stays_callable():
    import tgrad.decompose

    assert isinstance(tgrad.decompose, types.ModuleType)
    assert importlib.import_module("tgrad.decompose") is tgrad.decompose
    assert tgrad.decompose.NotDecomposableError is NotDecomposableError
    dec = tgrad.decompose(small_cnn(), image())  # the package's `decompose` still explains
    assert isinstance(dec, Decomposition)


def test_tgrad_result_holds_its_decomposition():
    result = TGrad(small_cnn())(image())
    dec = result.decomposition
    assert isinstance(dec, Decomposition)
    assert result.terms is dec.terms and result.logits is dec.record.logits
    assert torch.equal(result.gap, dec.gap) and torch.equal(result.logit, dec.logit)
    assert torch.equal(result.target, dec.record.target)


def test_models_is_split_and_reexports_every_name():
    from tgrad import lite, models, preprocessing

    for name in models.__all__:
        assert hasattr(models, name), name
    assert models.EfficientNetLite is lite.EfficientNetLite
    assert models.Conv2dSame is lite.Conv2dSame and models.same_padding is lite.same_padding
    assert models.Preprocessing is preprocessing.Preprocessing
    assert models.LITE0_PREPROCESSING is preprocessing.LITE0_PREPROCESSING
    assert tgrad.load_model is models.load_model


# -- issue 16, item 8: what to pass, instead of a raw library error --------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("espresso", r"integer class index, got the text 'espresso': pass the class's index"),
        (2**70, r"integer class index 0\.\.4 .*got 1180591620717411303424"),
        ([1, "cup"], r"got the text"),
        (-1, r"out of range 0\.\.4"),
    ],
)
def test_a_bad_target_says_what_to_pass(target, message):
    with pytest.raises(ValueError, match=message):
        TGrad(small_cnn())(image(), target=target)


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = small_cnn()

    def forward(self, x):
        return self.body(x), x.mean()


def test_a_model_returning_a_tuple_says_to_return_the_logits():
    with pytest.raises(ValueError, match=r"tensor of logits \[B,K\], got a tuple of 2 items"):
        TGrad(TupleOut().eval())(image())


@pytest.mark.parametrize("model", [None, "vgg16", lambda x: x])
def test_a_model_must_be_a_module(model):
    with pytest.raises(ValueError, match=r"the model must be a torch\.nn\.Module"):
        TGrad(model)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_an_input_of_another_dtype_than_the_weights_says_how_to_convert(dtype):
    with pytest.raises(ValueError, match=rf"the input is {dtype} but the model's weights are "
                       r"torch.float32: pass x.to\(torch.float32\)"):  # fmt: skip
        TGrad(small_cnn())(image().to(dtype))


@pytest.mark.parametrize(("channels", "hint"), [(1, "grayscale"), (4, "alpha"), (2, "convert")])
def test_an_input_with_other_channels_says_which_the_model_takes(channels, hint):
    x = torch.randn(1, channels, 16, 16)
    with pytest.raises(ValueError, match=rf"takes 3-channel images; the input has {channels} "
                       rf"channels? \(.*{hint}"):  # fmt: skip
        TGrad(small_cnn())(x)


# -- issue 16, item 10: the TF32 guard under PyTorch's precision API -------------------------

TF32_SCRIPT = """
import sys, torch
from tgrad.capture import exact_float32
b = torch.backends
def reads():
    out = {}
    for name, get in [("mm.new", lambda: b.cuda.matmul.fp32_precision),
                      ("conv.new", lambda: b.cudnn.conv.fp32_precision),
                      ("mm.old", lambda: b.cuda.matmul.allow_tf32),
                      ("cudnn.old", lambda: b.cudnn.allow_tf32),
                      ("precision", torch.get_float32_matmul_precision)]:
        try:
            out[name] = get()
        except RuntimeError:
            out[name] = "raises"
    return out
scenario = sys.argv[1]
if scenario == "new":
    b.cuda.matmul.fp32_precision = "tf32"
    b.cudnn.conv.fp32_precision = "tf32"
elif scenario == "legacy":
    b.cuda.matmul.allow_tf32 = True
    b.cudnn.allow_tf32 = False
elif scenario == "precision":
    torch.set_float32_matmul_precision("high")
before = reads()
with exact_float32(torch.device("cuda")):
    inside = (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision)
    with exact_float32(torch.device("cuda")):  # a second user (thread) meanwhile
        pass
    still = (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision)
after = reads()
print(inside == ("ieee", "ieee") and still == inside, before == after, before)
"""


@pytest.mark.slow  # a fresh process per scenario
@pytest.mark.parametrize("scenario", ["default", "new", "legacy", "precision"])
def test_the_tf32_guard_restores_the_callers_settings_under_either_api(scenario):
    # the flags need no GPU; each scenario in a fresh process (the settings are global)
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", TF32_SCRIPT, scenario], cwd=root, capture_output=True,
        text=True, timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-1500:]
    assert done.stdout.startswith("True True"), done.stdout
