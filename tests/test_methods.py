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
MODELS = ("efficientnet_lite0", "vgg16", "resnet50")
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
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {
        "gradcam": GradCAM,
        "gradcam++": GradCAMPlusPlus,
        "xgradcam": XGradCAM,
        "eigencam": EigenCAM,
        "scorecam": ScoreCAM,
    }[method]
    if method == "eigencam":
        # 1.5.7's EigenCAM leaves the SVD's sign to LAPACK (numpy); ours fixes it as the
        # library's own sign-corrected projection does (Seg-Eigen-CAM, eq. 13).
        from pytorch_grad_cam.utils.svd_on_activations import (
            get_2d_projection_with_sign_correction,
        )

        class SignCorrectedEigenCAM(EigenCAM):
            def get_cam_image(self, input_tensor, target_layer, targets, a, grads, smooth):
                return get_2d_projection_with_sign_correction(a)

        cls = SignCorrectedEigenCAM
    with cls(model=model, target_layers=[layer]) as cam:
        return cam(x, [ClassifierOutputTarget(int(t)) for t in target])


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "eigencam"])
def test_cam_agrees_with_pytorch_grad_cam(single_pass_maps, method):
    name, maps = single_pass_maps
    model, x, target, _ = case(name)
    layer = dict(model.named_modules())[maps.layers[method]]
    reference = grad_cam_reference(method, model, layer, x, target)
    assert_agrees(maps[method], reference, f"{name} {method}")


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


@pytest.mark.parametrize("name", MODELS)
def test_integrated_gradients_and_smoothgrad_agree_with_captum(name, monkeypatch):
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    model, x, target, preprocessing = case(name)
    steps, samples, sigma = 5, 4, 0.1
    maps = explain(
        model,
        x,
        target,
        methods=("integrated_gradients", "smoothgrad"),
        options={
            "integrated_gradients": {"steps": steps, "preprocessing": preprocessing},
            "smoothgrad": {"samples": samples, "sigma": sigma, "batch_size": 3},
        },
    )
    black = preprocessing.normalize(torch.zeros_like(x))
    reference = IntegratedGradients(model).attribute(
        x, baselines=black, target=target, n_steps=steps, method="riemann_trapezoid"
    )
    assert_agrees(maps["integrated_gradients"], captum_reduce(reference), f"{name} IG")

    noise = torch.stack(smoothgrad_noise(x.shape[1:], samples, sigma, 0, x.device))
    monkeypatch.setattr(  # captum draws its own noise; give it ours, in its order
        NoiseTunnel,
        "_add_noise_to_input",
        staticmethod(
            lambda inp, stdev, n: inp.repeat_interleave(n, 0) + noise.repeat(inp.shape[0], 1, 1, 1)
        ),
    )
    reference = NoiseTunnel(Saliency(model)).attribute(
        x, nt_type="smoothgrad", nt_samples=samples, stdevs=sigma, target=target, abs=False
    )
    assert_agrees(maps["smoothgrad"], captum_reduce(reference), f"{name} SmoothGrad")


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
        saliency = saliency + F.interpolate(post(c), size, mode="bilinear", align_corners=False)
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


@pytest.mark.parametrize("name", MODELS)
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
