"""Pictures: overlays blend exactly, labels and charts carry the numbers."""

import numpy as np
import pytest
import torch

from tgrad import viz


def test_overlay_blends_image_and_colour_map():
    image = torch.full((3, 4, 4), 0.5)
    saliency = torch.arange(16.0).reshape(4, 4)
    assert np.array_equal(viz.overlay(image, saliency, alpha=0.0), np.full((4, 4, 3), 128))
    assert np.array_equal(viz.overlay(image, saliency, alpha=1.0), viz.colorize(saliency))
    half = viz.overlay(image, saliency, alpha=0.5).astype(int)
    expected = (0.5 * 128 + 0.5 * viz.colorize(saliency).astype(float)).round()
    assert np.abs(half - expected).max() <= 1


def test_overlay_upsamples_small_maps_and_normalize_handles_constants():
    image = np.zeros((8, 6, 3), np.uint8)
    assert viz.overlay(image, torch.rand(2, 3)).shape == (8, 6, 3)
    assert torch.equal(viz.normalize(torch.ones(3, 3)), torch.zeros(3, 3))
    assert viz.normalize(torch.tensor([[2.0, 4.0]])).tolist() == [[0.0, 1.0]]
    # jet: low is dark blue, high is dark red
    colours = viz.colorize(torch.tensor([[0.0, 1.0]]))
    assert colours[0, 0, 2] > 100 and colours[0, 0, 0] == 0
    assert colours[0, 1, 0] > 100 and colours[0, 1, 2] == 0


@pytest.fixture(scope="module")
def result():
    from tests.nets import small_cnn
    from tgrad.tgrad import TGrad

    return TGrad(small_cnn())(torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)))


def test_share_label_and_chart(result):
    label = viz.share_label(result, 1)
    term = result.terms[1]
    share = 100 * float(term.contribution[0]) / float(result.logit[0])
    assert label.startswith("conv1 (Conv2d, 16x16): ") and f"{share:+.1f}%" in label
    fig = viz.decomposition_chart(result, highlight="conv1")
    bars = fig.axes[0].patches
    assert len(bars) == len(result.terms)
    assert sum(b.get_height() for b in bars) == pytest.approx(float(result.logit[0]), abs=1e-4)
    assert bars[1].get_facecolor()[:3] == pytest.approx((1.0, 0.498, 0.055), abs=1e-2)  # orange


def test_layer_strip_has_a_panel_per_layer_and_the_aggregate(result, tmp_path):
    fig = viz.layer_strip(result, torch.rand(3, 16, 16))
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titled) == len(result.spatial_terms) + 1
    assert titled[-1] == "T-Grad (all layers)"
    fig.savefig(tmp_path / "strip.png")
