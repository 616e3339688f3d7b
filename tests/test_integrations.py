"""The adapters (tgrad.integrations) give tgrad.methods.explain's maps, after their
documented normalisation, and run inside their host library's own entry points: captum's
``NoiseTunnel`` and ``visualize_image_attr``, pytorch-grad-cam's ``show_cam_on_image``,
and Quantus's ``explain_func`` protocol. On EfficientNet-Lite0 with its real weights and on
a random ResNet-18 (tests/integration_cases.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.integration_cases import MODELS, case
from tgrad.methods import explain
from tgrad.tgrad import TGrad

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=MODELS)
def tgrad_case(request):
    """(name, model, x, target, explain's T-Grad map [B,H,W], the decomposition's gap)."""
    model, x, target, _ = case(request.param)
    maps = explain(model, x, target, methods="tgrad")["tgrad"]
    gap = TGrad(model)(x, target).gap
    return request.param, model, x, target, maps, gap


def tolerance(y: torch.Tensor) -> torch.Tensor:
    """SPEC 1's completeness tolerance ``1e-4 * max(1, |y|)``."""
    return 1e-4 * y.abs().clamp(min=1.0)


# ---------------------------------------------------------------- captum


def test_captum_attribution_is_explain_s_map_and_its_delta_is_the_gap(tgrad_case):
    pytest.importorskip("captum")
    from captum.attr import Attribution

    from tgrad.integrations.captum import TGradAttribution

    _, model, x, target, expected, gap = tgrad_case
    attribution = TGradAttribution(model)
    assert isinstance(attribution, Attribution) and attribution.has_convergence_delta()
    maps = attribution.attribute(x, target=target)
    assert maps.shape == (2, 1, *x.shape[-2:])
    # T-Grad and explain's "tgrad" build formula 8 from the same terms (tests/test_methods)
    torch.testing.assert_close(maps[:, 0], expected, rtol=1e-5, atol=1e-8)
    again, delta = attribution.attribute(x, target=target.tolist(), return_convergence_delta=True)
    torch.testing.assert_close(again, maps, rtol=0, atol=0)
    torch.testing.assert_close(delta, gap, rtol=0, atol=0)
    torch.testing.assert_close(attribution.compute_convergence_delta(maps, x, target), gap)
    y = TGrad(model)(x, target).logit
    assert bool((delta.abs() <= tolerance(y)).all())
    (single,) = attribution.attribute((x,), target=int(target[0]))  # a 1-tuple in, one out
    torch.testing.assert_close(single[0], maps[0], rtol=1e-5, atol=1e-8)


def test_captum_noise_tunnel_averages_t_grad_over_the_noisy_copies(tgrad_case, monkeypatch):
    pytest.importorskip("captum")
    from captum.attr import NoiseTunnel

    from tgrad.integrations.captum import TGradAttribution

    _, model, x, target, _, _ = tgrad_case
    samples, sigma = 3, 0.1
    noise = sigma * torch.randn(samples, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(  # captum draws its own noise; give it ours, in its order
        NoiseTunnel,
        "_add_noise_to_input",
        staticmethod(
            lambda inp, stdev, n: inp.repeat_interleave(n, 0) + noise.repeat(inp.shape[0], 1, 1, 1)
        ),
    )
    tunnel = NoiseTunnel(TGradAttribution(model))
    smoothed, delta = tunnel.attribute(
        x,
        nt_type="smoothgrad",
        nt_samples=samples,
        stdevs=sigma,
        target=target,
        return_convergence_delta=True,
    )
    noisy = x.repeat_interleave(samples, 0) + noise.repeat(x.shape[0], 1, 1, 1)
    per_copy = explain(model, noisy, target.repeat_interleave(samples), methods="tgrad")["tgrad"]
    expected = per_copy.view(x.shape[0], samples, *x.shape[-2:]).mean(1)
    assert smoothed.shape == (2, 1, *x.shape[-2:])
    torch.testing.assert_close(smoothed[:, 0], expected, rtol=1e-4, atol=1e-7)
    assert delta.shape == (2 * samples,)  # one gap per noisy copy, each within tolerance
    logits = TGrad(model)(noisy, target.repeat_interleave(samples)).logit
    assert bool((delta.abs() <= tolerance(logits)).all())


def test_captum_visualization_draws_the_t_grad_map(tgrad_case):
    pytest.importorskip("captum")
    from captum.attr import visualization

    from tgrad.integrations.captum import TGradAttribution

    name, model, x, target, _, _ = tgrad_case
    maps = TGradAttribution(model).attribute(x[:1], target=target[:1])
    attr = maps[0].permute(1, 2, 0).numpy()  # [H,W,1]: captum's channels-last layout
    image = x[0].permute(1, 2, 0).numpy()
    image = (image - image.min()) / (image.max() - image.min())
    figure, axis = visualization.visualize_image_attr(
        attr, image, method="blended_heat_map", sign="absolute_value", use_pyplot=False
    )
    drawn = np.asarray(axis.images[-1].get_array())
    # captum's scale, worked out again: the value below which 98 % of the map's mass lies
    values = np.sort(np.abs(attr).ravel())
    cumulative = np.cumsum(values)
    threshold = values[np.nonzero(cumulative >= cumulative[-1] * 0.98)[0][0]]
    np.testing.assert_allclose(drawn, np.clip(np.abs(attr[..., 0]) / threshold, 0, 1), atol=1e-6)
    assert figure is axis.figure and drawn.shape == tuple(x.shape[-2:]), name


# ---------------------------------------------------------------- pytorch-grad-cam


def grad_cam_scale(maps: torch.Tensor) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image``, written out: ``m - min``, / ``1e-7 + max``."""
    m = maps.double().numpy()
    m = m - m.min(axis=(1, 2), keepdims=True)
    return m / (1e-7 + m.max(axis=(1, 2), keepdims=True))


def test_grad_cam_maps_are_explain_s_scaled_and_show_on_the_image(tgrad_case):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from tgrad.integrations.pytorch_grad_cam import TGradCAM

    _, model, x, target, expected, _ = tgrad_case
    with TGradCAM(model) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in target])
        top1 = cam(input_tensor=x)  # no targets: each image's top-1, as the library does
    assert isinstance(maps, np.ndarray) and maps.dtype == np.float32
    assert maps.shape == (2, *x.shape[-2:])
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    np.testing.assert_allclose(maps, grad_cam_scale(expected), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(top1, maps)  # the targets were the top-1 classes
    torch.testing.assert_close(cam.outputs.argmax(1), target)
    image = x[0].permute(1, 2, 0).numpy()
    image = np.float32((image - image.min()) / (image.max() - image.min()))
    shown = show_cam_on_image(image, maps[0], use_rgb=True)
    assert shown.dtype == np.uint8 and shown.shape == (*x.shape[-2:], 3)
    hot = np.unravel_index(maps[0].argmax(), maps[0].shape)  # jet: the maximum is red
    assert int(shown[hot][0]) > int(shown[hot][2])


def test_grad_cam_refuses_what_t_grad_cannot_answer():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputSoftmaxTarget,
        ClassifierOutputTarget,
    )

    from tests.nets import small_cnn
    from tgrad.integrations.pytorch_grad_cam import TGradCAM

    cam, x = TGradCAM(small_cnn()), torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="ClassifierOutputTarget"):
        cam(x, [ClassifierOutputSoftmaxTarget(0)] * 2)  # a probability is no logit
    with pytest.raises(ValueError, match="2 images"):
        cam(x, [ClassifierOutputTarget(0)])
    with pytest.raises(ValueError, match="aug_smooth"):
        cam(x, None, aug_smooth=True)


# ---------------------------------------------------------------- Quantus


@pytest.mark.parametrize("method", ["tgrad", "gradcam", "vanilla", "random"])
def test_quantus_explain_is_explain_s_map_in_numpy(tgrad_case, method):
    from tgrad.integrations.quantus import explain as quantus_explain

    name, model, x, target, tgrad_map, _ = tgrad_case
    got = quantus_explain(model=model, inputs=x.numpy(), targets=target.numpy(), method=method)
    expected = tgrad_map if method == "tgrad" else explain(model, x, target, methods=method)[method]
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.shape == (2, 1, *x.shape[-2:])
    np.testing.assert_allclose(got[:, 0], expected.numpy(), rtol=1e-5, atol=1e-8, err_msg=name)


def test_quantus_explain_takes_options_and_refuses_unknown_keywords():
    from tests.nets import small_cnn
    from tgrad.integrations.quantus import explain as quantus_explain

    model, x = small_cnn(), np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    seeded = quantus_explain(model, x, np.array([0, 1]), method="random", options={"seed": 3})
    expected = explain(
        model, torch.as_tensor(x, dtype=torch.float32), [0, 1], "random", {"random": {"seed": 3}}
    )["random"]
    np.testing.assert_array_equal(seeded[:, 0], expected.numpy())
    assert quantus_explain(model, x, 1, device="cpu").shape == (2, 1, 16, 16)  # one int target
    with pytest.raises(TypeError, match="unknown keyword"):
        quantus_explain(model, x, [0, 1], methd="tgrad")
    with pytest.raises(ValueError, match="unknown method"):
        quantus_explain(model, x, [0, 1], method="nope")
