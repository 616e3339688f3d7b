"""Each baseline against its reference (SPEC 3): pytorch-grad-cam 1.5.7 for the CAM family,
captum 0.9.0 for the gradient family, and FullGrad's formula written out plainly below.

Agreement = after the same upsampling and a min-max normalisation of each map, Pearson
correlation >= 0.999 and largest absolute difference <= 1e-3, on EfficientNet-Lite0
with its real weights on the bundled photos, and on random-weight VGG-16 and ResNet-50.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.nets import perturb
from tgrad.decompose import SATURATING, bias_of
from tgrad.images import load_image
from tgrad.methods import METHODS, explain
from tgrad.methods.gradient import smoothgrad_noise
from tgrad.models import load_model
from tgrad.tgrad import TGrad

pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("captum")

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")
MODELS = (
    pytest.param("efficientnet_lite0", marks=pytest.mark.slow),  # real weights, 224 px photos
    "vgg16",  # random weights, 128 px
    "resnet50",
)
MANY_PASSES = (  # methods of many passes: one random net in the fast loop
    MODELS[0],
    "vgg16",
    pytest.param("resnet50", marks=pytest.mark.slow),
)
SINGLE_PASS = [n for n, m in METHODS.items() if m.single_pass]


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation of each map of a batch [B,H,W] (float64, on the CPU)."""
    maps = torch.as_tensor(maps).detach().double().cpu()
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return (maps - lo[:, None, None]) / (hi - lo).clamp(min=1e-12)[:, None, None]


def agreement(ours: torch.Tensor, reference) -> tuple[float, float]:
    """(worst Pearson over the batch, largest absolute difference) after normalisation."""
    a, b = normalise(ours), normalise(reference)
    a0 = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b0 = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    pearson = (a0 * b0).sum(1) / (a0.norm(dim=1) * b0.norm(dim=1)).clamp(min=1e-300)
    return float(pearson.min()), float((a - b).abs().max())


def assert_agrees(ours, reference, what: str) -> None:
    pearson, diff = agreement(ours, reference)
    print(f"{what}: pearson {pearson:.6f}, max diff {diff:.2e}")
    assert pearson >= 0.999 and diff <= 1e-3, f"{what}: pearson {pearson}, max diff {diff}"


CASES: dict = {}


def case(name: str):
    """(model, x, target) for one architecture; built once per test session."""
    if name not in CASES:
        if name == "efficientnet_lite0":
            loaded = load_model(name)
            x = torch.stack([loaded.preprocessing(load_image(ASSETS / f"{p}.jpg")) for p in PHOTOS])
            model = loaded.module
        else:
            loaded = load_model(name, weights="random")
            model = perturb(loaded.module)
            x = loaded.preprocessing(load_image(ASSETS / "chelsea.jpg"))[None]
            x = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
        with torch.no_grad():
            target = model(x).argmax(1)
        CASES[name] = (model, x, target, loaded.preprocessing)
    return CASES[name]


@pytest.fixture(scope="module", params=MODELS)
def single_pass_maps(request):
    """All single-pass methods on one model, from one shared pass."""
    model, x, target, _ = case(request.param)
    return request.param, explain(model, x, target, methods=SINGLE_PASS)


def grad_cam_reference(method: str, model, layer: nn.Module, x, target):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {
        "gradcam": GradCAM,
        "gradcam++": GradCAMPlusPlus,
        "xgradcam": XGradCAM,
        "scorecam": ScoreCAM,
    }[method]
    with cls(model=model, target_layers=[layer]) as cam:
        return cam(x, [ClassifierOutputTarget(int(t)) for t in target])


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam"])
def test_cam_agrees_with_pytorch_grad_cam(single_pass_maps, method):
    name, maps = single_pass_maps
    model, x, target, _ = case(name)
    layer = dict(model.named_modules())[maps.layers[method]]
    reference = grad_cam_reference(method, model, layer, x, target)
    assert_agrees(maps[method], reference, f"{name} {method}")


def test_eigencam_agrees_with_the_sign_corrected_projection(single_pass_maps):
    """SPEC 3: EigenCAM's sign is fixed as pytorch-grad-cam's
    ``get_2d_projection_with_sign_correction`` fixes it (Seg-Eigen-CAM, eq. 13). The
    reference is that function, unpatched, on the activations the library's own hooks
    record, through the library's ReLU and ``scale_cam_image`` as its CAMs are."""
    import numpy as np
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.svd_on_activations import (
        get_2d_projection_with_sign_correction,
    )

    name, maps = single_pass_maps
    model, x, _, _ = case(name)
    layer = dict(model.named_modules())[maps.layers["eigencam"]]
    recorder = ActivationsAndGradients(model, [layer], None)
    try:
        with torch.no_grad():
            recorder(x)
        activations = recorder.activations[0].numpy().copy()
    finally:
        recorder.release()
    projection = get_2d_projection_with_sign_correction(activations)
    reference = scale_cam_image(np.maximum(projection, 0), (x.shape[-1], x.shape[-2]))
    assert_agrees(maps["eigencam"], reference, f"{name} eigencam")


def captum_reduce(attribution: torch.Tensor) -> torch.Tensor:
    return attribution.detach().abs().sum(1)


@pytest.mark.parametrize("method", ["vanilla", "input_x_gradient"])
def test_gradients_agree_with_captum(single_pass_maps, method):
    from captum.attr import InputXGradient, Saliency

    name, maps = single_pass_maps
    model, x, target, _ = case(name)
    if method == "vanilla":
        reference = Saliency(model).attribute(x, target=target, abs=False)
    else:
        reference = InputXGradient(model).attribute(x.clone().requires_grad_(), target=target)
    assert_agrees(maps[method], captum_reduce(reference), f"{name} {method}")


@pytest.mark.parametrize("name", MANY_PASSES)
def test_integrated_gradients_and_smoothgrad_agree_with_captum(name, monkeypatch):
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    model, x, target, preprocessing = case(name)
    steps, samples = 5, 4
    maps = explain(
        model,
        x,
        target,
        methods=("integrated_gradients", "smoothgrad"),
        options={
            "integrated_gradients": {"steps": steps, "preprocessing": preprocessing},
            "smoothgrad": {"samples": samples, "batch_size": 3},
        },
    )
    black = preprocessing.normalize(torch.zeros_like(x))
    reference, captum_delta = IntegratedGradients(model).attribute(
        x,
        baselines=black,
        target=target,
        n_steps=steps,
        method="riemann_trapezoid",
        return_convergence_delta=True,
    )
    assert_agrees(maps["integrated_gradients"], captum_reduce(reference), f"{name} IG")
    # captum's weights are ours times (n-1)/n, so its sum(IG) is ours times that factor:
    # delta_ours = n/(n-1) (delta_captum + dy) - dy, with dy = y(x) - y(black)
    with torch.no_grad():
        logits = model(torch.cat([x, black]))
    y = logits.gather(1, target.repeat(2)[:, None])[:, 0].double()
    dy = y[: len(x)] - y[len(x) :]
    expected = steps / (steps - 1) * (captum_delta.double() + dy) - dy
    delta = maps.convergence_delta["integrated_gradients"].double()
    # float32 sums of 150k attributions and logits of size ~10: 1e-4 of |dy| at most
    torch.testing.assert_close(delta, expected, rtol=0, atol=1e-4 * float(dy.abs().max()) + 1e-4)

    flat = x.flatten(1)
    sigma = 0.15 * (flat.amax(1) - flat.amin(1))  # SPEC 3, per image
    draws = torch.stack([z.clone() for z in smoothgrad_noise(x.shape[1:], samples, 0, x.device)])
    noise = (sigma[:, None, None, None, None] * draws[None]).flatten(0, 1)  # image-major
    monkeypatch.setattr(  # captum draws its own noise; give it ours, in its order
        NoiseTunnel,
        "_add_noise_to_input",
        staticmethod(lambda inp, stdev, n: inp.repeat_interleave(n, 0) + noise),
    )
    reference = NoiseTunnel(Saliency(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=samples, stdevs=0.0, target=target, abs=False
    )
    assert_agrees(maps["smoothgrad"], captum_reduce(reference), f"{name} SmoothGrad")


def linear_model(inputs: int, classes: int, seed: int = 0) -> nn.Module:
    """``logits = W x + b`` with positive weights: its gradient is ``W[c]`` everywhere."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(inputs, classes))
    with torch.no_grad():
        model[1].weight.copy_(torch.rand(classes, inputs, generator=g) + 0.1)
        model[1].bias.copy_(torch.randn(classes, generator=g))
    return model.eval()


@pytest.mark.parametrize("steps", [10, 50])
def test_integrated_gradients_integrate_a_linear_model_exactly(steps):
    """On ``y = W x + b`` the integral of the gradient along the path is ``W[c] (x - x0)``,
    and its sum is ``y(x) - y(x0)`` exactly: the trapezoid weights must sum to 1 (captum's
    sum to (n-1)/n: 0.90 of it at 10 steps, 0.98 at 50). With x > x0 and W > 0 every
    attribution is positive, so the map (sum over channels of |a|) sums to the same."""
    model = linear_model(3 * 5 * 5, 4)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 5, 5, generator=g) + 1.0
    target = torch.tensor([1, 3])
    weights = model[1].weight.detach()[target]  # [2, 75]
    for x0 in (0.0, 0.5):
        baseline = torch.full((3, 5, 5), x0)
        maps = explain(
            model,
            x,
            target,
            "integrated_gradients",
            {"integrated_gradients": {"steps": steps, "baseline": baseline}},
        )
        by_hand = (weights * (x - x0).flatten(1)).sum(1)  # y(x) - y(x0): the bias cancels
        # float32 sums of 75 products of size ~1 (and 50 weighted steps): 1e-5 relative
        torch.testing.assert_close(
            maps["integrated_gradients"].sum((1, 2)), by_hand, rtol=1e-5, atol=0
        )
        delta = maps.convergence_delta["integrated_gradients"]
        assert float(delta.abs().max()) <= 1e-5 * float(by_hand.abs().max())


def test_integrated_gradients_baseline_is_one_named_option():
    """SPEC 3: a black image (pixel 0, normalised) unless another is named; a name that
    needs the preprocessing without it is an error, never a silent 0."""
    _, photos, _, preprocessing = case("efficientnet_lite0")
    model, x = linear_model(3 * 8 * 8, 5), F.interpolate(photos[:2], size=(8, 8), mode="area")

    def ig(**options):
        options = {"steps": 3, **options}
        return explain(model, x, [0, 1], "integrated_gradients", {"integrated_gradients": options})

    with pytest.raises(ValueError, match="preprocessing"):
        ig()  # the default, black, needs it
    with pytest.raises(ValueError, match="preprocessing"):
        ig(baseline="white")
    black = preprocessing.normalize(torch.zeros(3, 8, 8))
    white = preprocessing.normalize(torch.ones(3, 8, 8))
    named = ig(preprocessing=preprocessing)["integrated_gradients"]
    assert torch.equal(named, ig(baseline=black)["integrated_gradients"])
    assert torch.equal(
        ig(baseline="white", preprocessing=preprocessing)["integrated_gradients"],
        ig(baseline=white)["integrated_gradients"],
    )
    assert torch.equal(
        ig(baseline="zero")["integrated_gradients"],
        ig(baseline=torch.zeros(3, 8, 8))["integrated_gradients"],
    )
    assert not torch.equal(named, ig(baseline="zero")["integrated_gradients"])
    for bad, message in (
        ("grey", "no baseline 'grey'"),
        (None, "a name"),
        (torch.zeros(3, 4, 4), "does not fit"),
    ):
        with pytest.raises(ValueError, match=message):
            ig(baseline=bad, preprocessing=preprocessing)


class Quadratic(nn.Module):
    """``y_0 = |x|^2 / 2``: its gradient is x itself, so SmoothGrad's mean gradient is
    ``x + sigma * (mean of the noise draws)``."""

    def forward(self, x):
        half = 0.5 * (x * x).sum((1, 2, 3))
        return torch.stack([half, -half], 1)


def test_smoothgrad_noise_is_a_fraction_of_each_image_s_range():
    """SPEC 3: sigma = 0.15 (max(x) - min(x)) per image, the draws N(0,1) of [C,H,W] one
    after the other from a generator seeded with the seed; an absolute sigma still works."""
    g = torch.Generator().manual_seed(2)
    x = torch.stack([torch.rand(3, 6, 6, generator=g), 4 * torch.rand(3, 6, 6, generator=g) - 2])
    samples = 7
    g = torch.Generator().manual_seed(0)
    mean_draw = torch.stack([torch.randn(3, 6, 6, generator=g) for _ in range(samples)]).mean(0)
    spans = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    for options, sigma in (
        ({}, 0.15 * spans),
        ({"noise_level": 0.05}, 0.05 * spans),
        ({"sigma": 0.3}, torch.tensor([0.3, 0.3])),
    ):
        maps = explain(
            Quadratic(),
            x,
            0,
            "smoothgrad",
            {"smoothgrad": {"samples": samples, "batch_size": 3, **options}},
        )
        by_hand = (x + sigma[:, None, None, None] * mean_draw).abs().sum(1)
        torch.testing.assert_close(maps["smoothgrad"], by_hand, rtol=1e-5, atol=1e-6)


def plain_fullgrad(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """FullGrad's formula, written out: input x gradient plus every spatial layer term
    ``b * dy/dz`` (SPEC 1-2: a ReLU6's clipped constants join the term of the layer that
    feeds it), each through abs / min-max per sample / sum over channels, upsampled.

    Outputs are captured by forward hooks that hand the rest of the network a copy, so
    later in-place operations leave them as the module returned them.
    """
    outputs: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []  # (module, input, out)
    copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(copy) -> (copy, output)

    def keep(module, inputs, output):
        outputs.append((module, inputs[0], output))
        copy = output.clone()
        copies[id(copy)] = (copy, output)
        return copy

    watched = [
        m
        for m in model.modules()
        if isinstance(m, SATURATING) or (not list(m.children()) and bias_of(m) is not None)
    ]
    handles = [m.register_forward_hook(keep) for m in watched]
    try:
        xg = x.clone().requires_grad_(True)
        y = model(xg).gather(1, target[:, None]).sum()
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(y, [xg] + [o for _, _, o in outputs], allow_unused=True)
    terms: dict[int, torch.Tensor] = {}  # id of the layer output -> its term
    for (module, inp, out), g in zip(outputs, grads[1:], strict=True):
        if g is None or out.dim() != 4:
            continue
        if isinstance(module, SATURATING):
            c = 6.0 * (out >= module.max_val) * g if module.max_val else torch.zeros_like(g)
            if module.min_val:
                c = c + module.min_val * (out <= module.min_val) * g
            host = id(copies[id(inp)][1]) if id(inp) in copies else id(inp)
            terms[host if host in terms else id(out)] = terms.get(host, 0) + c
        else:
            terms[id(out)] = bias_of(module).detach().view(1, -1, 1, 1) * g

    def post(c):
        c = c.abs()
        flat = c.flatten(1)
        c = c - flat.min(1).values.view(-1, 1, 1, 1)
        c = c / (c.flatten(1).max(1).values.view(-1, 1, 1, 1) + 1e-6)
        return c.sum(1, keepdim=True)

    size = x.shape[-2:]
    saliency = post(x * grads[0])
    for c in terms.values():
        # the FullGrad authors' code upsamples with align_corners=True (SPEC 3)
        saliency = saliency + F.interpolate(post(c), size, mode="bilinear", align_corners=True)
    return saliency[:, 0].detach()


def test_fullgrad_agrees_with_its_formula(single_pass_maps):
    name, maps = single_pass_maps
    model, x, target, _ = case(name)
    assert_agrees(maps["fullgrad"], plain_fullgrad(model, x, target), f"{name} FullGrad")


def test_tgrad_is_the_engine_s_saliency(single_pass_maps):
    name, maps = single_pass_maps
    model, x, target, _ = case(name)
    expected = TGrad(model)(x, target).saliency
    torch.testing.assert_close(maps["tgrad"], expected, rtol=1e-5, atol=1e-8)


# ScoreCAM runs one forward per channel: small inputs and layers with few channels (the
# default layers are tested with the other CAM methods).
SCORECAM_CASES = {
    "efficientnet_lite0": (224, "_blocks.1._bn2"),  # 24 channels, 56x56
    "vgg16": (32, "features.9"),  # 128 channels, 8x8
    "resnet50": (32, "layer1.0.conv1"),  # 64 channels, 8x8
}


@pytest.mark.parametrize("name", MANY_PASSES)
def test_scorecam_agrees_with_pytorch_grad_cam(name):
    model, x, target, _ = case(name)
    size, layer = SCORECAM_CASES[name]
    x = F.interpolate(x[:2], size=(size, size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        target = model(x).argmax(1)
    maps = explain(model, x, target, methods="scorecam", options={"scorecam": {"layer": layer}})
    module = dict(model.named_modules())[maps.layers["scorecam"]]
    reference = grad_cam_reference("scorecam", model, module, x, target)
    assert_agrees(maps["scorecam"], reference, f"{name} ScoreCAM")
