"""Other libraries' metrics as oracles for the project's own numbers.

* Quantus's Model Parameter Randomisation Test (MPRT, Adebayo et al. 2018) with our
  ``explain_func`` against :func:`tgrad.sanity.cascade` on the same model, the same layers
  (every module with ``reset_parameters``, from the output to the input, one at a time,
  cumulatively) and the same random weights: the same Spearman values of the absolute maps
  at every step.

  Two conventions differ, and the tests align or check them rather than hide them:
  the seed (Quantus seeds the global RNG with ``seed + 1`` before every layer's reset,
  ours with ``seed * 1000 + k`` for group k; the tests give our cascade Quantus's seed, the
  one thing patched), and constant maps (a map that is constant, e.g. all zero once a
  random ResNet's logit has no positive term, has no ranking: scipy's Spearman, and so
  Quantus, gives NaN for one such sample and Quantus refuses a batch of them outright;
  SPEC 5 defines the similarity as 0 then).
* pytorch-grad-cam's ROAD (Rong et al. 2022) on our T-Grad maps, through
  ``TGradCAM``, against a random map (our ``random`` control): ROAD orders the two as our
  insertion/deletion (tgrad.metrics) does.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tgrad.sanity
from tests.integration_cases import case
from tgrad.images import load_image
from tgrad.integrations.quantus import explain as quantus_explain
from tgrad.methods import explain
from tgrad.metrics import insertion_deletion
from tgrad.models import load_model
from tgrad.sanity import Group, cascade

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ASSETS = Path(__file__).resolve().parent.parent / "assets"
QUANTUS_SEED = 7
SAME_SPEARMAN = 1e-3  # the brief's bound; float32 ties after Quantus's max-normalisation only


def quantus_layers(model: torch.nn.Module) -> list[Group]:
    """Quantus's MPRT layers as our cascade's groups: every module with
    ``reset_parameters``, nearest the output first, one group each."""
    names = [n for n, m in model.named_modules() if hasattr(m, "reset_parameters")]
    return [Group(n, (n,)) for n in reversed(names)]


def run_mprt(model, x, target) -> tuple[dict[str, list[float]], AssertionError | None]:
    """Quantus's MPRT scores per layer (T-Grad, absolute maps, Spearman), and the
    assertion Quantus stopped with, if any (the scores of the layers done are kept)."""
    quantus = pytest.importorskip("quantus")
    mprt = quantus.MPRT(layer_order="top_down", seed=QUANTUS_SEED, disable_warnings=True)
    stopped = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's warning for a constant map (NaN)
        try:
            mprt(
                model=model,
                x_batch=x.numpy(),
                y_batch=target.numpy(),
                explain_func=quantus_explain,
                explain_func_kwargs={"method": "tgrad"},
                device="cpu",
            )
        except AssertionError as error:  # Quantus refuses a batch of all-zero maps
            stopped = error
    return {k: v for k, v in mprt.evaluation_scores.items() if v}, stopped


def our_cascade(model, x, target, monkeypatch) -> list:
    real = tgrad.sanity.randomize
    monkeypatch.setattr(  # Quantus's seeding: seed + 1 before every layer's reset
        tgrad.sanity, "randomize", lambda modules, seed: real(modules, QUANTUS_SEED + 1)
    )
    return list(cascade(model, x, target, "tgrad", groups=quantus_layers(model)))


@pytest.mark.slow  # full-resolution model, many passes
def test_quantus_mprt_equals_our_cascade_on_lite0(monkeypatch):
    loaded = load_model("efficientnet_lite0")
    x = loaded.preprocessing(load_image(ASSETS / "coffee.jpg"))[None]
    with torch.no_grad():
        target = loaded.module(x).argmax(1)
    scores, stopped = run_mprt(loaded.module, x, target)
    assert stopped is None  # no all-zero map on the way (Lite0 keeps a positive term)
    steps = our_cascade(loaded.module, x, target, monkeypatch)
    assert list(scores) == ["original"] + [s.group for s in steps[1:]]  # 99 layers
    ours = np.array([s.similarity["tgrad"]["spearman_abs"].numpy() for s in steps])
    theirs = np.array([scores[k] for k in scores])
    assert not np.isnan(theirs).any()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=SAME_SPEARMAN)
    print(np.round(ours[:, 0], 3).tolist())
    assert ours[1:].min() < 0.5  # not a test of two constant curves: the map does change


@pytest.mark.slow  # full-resolution model, many passes
def test_quantus_mprt_equals_our_cascade_on_a_random_resnet_until_its_maps_vanish(
    monkeypatch,
):
    model, x, _, _ = case("resnet18")
    x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    with torch.no_grad():
        target = model(x).argmax(1)
    scores, stopped = run_mprt(model, x, target)
    steps = our_cascade(model, x, target, monkeypatch)
    done = len(scores)  # "original" and the layers Quantus finished
    assert 5 < done < len(steps)
    # where Quantus stopped, every map of the batch is zero (it asserts against that);
    # SPEC 5 gives such a map similarity 0 and the cascade goes on to the input layer
    assert stopped is not None and "equal to zero" in str(stopped)
    assert float(steps[done].maps["tgrad"].abs().max()) == 0.0
    assert steps[done].similarity["tgrad"]["spearman_abs"].tolist() == [0.0, 0.0]
    theirs = np.array([scores[k] for k in scores])
    ours = np.array([s.similarity["tgrad"]["spearman_abs"].numpy() for s in steps[:done]])
    constant = np.array(
        [[float(m.max() - m.min()) == 0.0 for m in s.maps["tgrad"]] for s in steps[:done]]
    )
    # a single constant map: NaN for scipy (and Quantus), 0 for SPEC 5
    np.testing.assert_array_equal(np.isnan(theirs), constant)
    assert (ours[constant] == 0.0).all()
    np.testing.assert_allclose(ours[~constant], theirs[~constant], rtol=0, atol=SAME_SPEARMAN)


ROAD_PERCENTILES = (20, 50, 80)
ID_STEPS = 8  # a coarse insertion/deletion curve: the ordering, not the paper's numbers


@pytest.mark.slow  # full-resolution model, many passes
def test_road_orders_t_grad_and_a_random_map_as_insertion_deletion_does():
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    from tgrad.integrations.pytorch_grad_cam import TGradCAM

    loaded = load_model("efficientnet_lite0")
    photos = ("coffee", "chelsea", "astronaut", "rocket")
    x = torch.stack([loaded.preprocessing(load_image(ASSETS / f"{p}.jpg")) for p in photos])
    model = loaded.module
    maps = explain(model, x, methods="random")
    target = maps.target
    cams = {  # both as pytorch-grad-cam hands CAMs to its metrics: [B,H,W] in [0, 1]
        "tgrad": TGradCAM(model)(x),
        "random": scale_cam_image(maps["random"].numpy()),
    }
    softmax = [ClassifierOutputSoftmaxTarget(int(c)) for c in target]  # both: probability
    road, ours = {}, {}
    for name, cam in cams.items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # ROAD's imputer adds noise from the global RNG
            road[name] = float(
                ROADCombined(percentiles=list(ROAD_PERCENTILES))(x, cam, softmax, model).mean()
            )
        scores = insertion_deletion(model, x, torch.from_numpy(cam), target, n_steps=ID_STEPS)
        ours[name] = float(scores.insertion_minus_deletion.mean())
    print(f"ROAD combined {road}, insertion - deletion {ours}")
    assert (road["tgrad"] > road["random"]) == (ours["tgrad"] > ours["random"])
    # and both say T-Grad beats chance on these photos
    assert road["tgrad"] > road["random"] and ours["tgrad"] > ours["random"]
