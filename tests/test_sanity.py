"""The sanity check of SPEC 5 (cascading randomization) and Guided Backpropagation.

Oracles: similarity measures on hand-made maps; each step's maps equal those of a model
randomized by hand; Guided Backprop equal to captum's on a ReLU network and to a gradient
worked out by hand; the shared model and other threads' answers unchanged; and on
EfficientNet-Lite0 with its real weights, T-Grad fails to survive randomization while
Guided Backprop (the best-known method that fails the check) survives it.
"""

import copy
import csv
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.nets import small_cnn
from tgrad.capture import capture
from tgrad.images import load_image
from tgrad.methods import METHODS, explain
from tgrad.methods.guided import GuidedBackprop
from tgrad.models import load_model
from tgrad.sanity import (
    MEASURES,
    Group,
    cascade,
    hog_spearman,
    randomization_groups,
    randomize,
    similarity,
    spearman,
    ssim,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fast on a shared, busy CPU

ASSETS = Path(__file__).resolve().parent.parent / "assets"
METHODS_CHECKED = ("tgrad", "vanilla", "guided_backprop")


def smooth_map(seed: int, size: int = 64) -> np.ndarray:
    """A smooth, structured, non-negative map (a few Gaussian blobs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    blobs = [
        np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s**2))
        for cx, cy, s in rng.uniform([0.1, 0.1, 0.05], [0.9, 0.9, 0.2], size=(4, 3))
    ]
    return np.sum(blobs, axis=0)


# ---------------------------------------------------------------- similarity measures


def test_identical_maps_are_similar_by_every_measure():
    a = torch.tensor(np.stack([smooth_map(0), smooth_map(1) - 0.5]))
    values = similarity(a, a.clone())
    assert set(values) == set(MEASURES)
    for measure, v in values.items():
        assert v.shape == (2,) and v.dtype == torch.float64
        assert torch.allclose(v, torch.ones(2, dtype=torch.float64)), measure


def test_a_map_against_its_negative():
    a = smooth_map(2) - 0.3  # both signs
    values = similarity(torch.tensor(a[None]), torch.tensor(-a[None]))
    assert float(values["spearman"]) == pytest.approx(-1.0)
    assert float(values["spearman_abs"]) == pytest.approx(1.0)
    assert float(values["ssim"]) < 0  # the normalised negative is the inverted picture


def test_spearman_by_hand():
    # ranks 1,2,3,4 against 1,2,4,3: rho = 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 12/60
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 40, 30])) == pytest.approx(0.8)
    # a rank correlation ignores monotone transforms, SSIM and HOG see the change of shape
    a = smooth_map(3)
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert ssim(a, a**3) < 0.99
    # min-max normalisation makes SSIM and HOG blind to affine changes of scale
    assert ssim(a, 5 * a + 2) == pytest.approx(1.0)
    assert hog_spearman(a, 5 * a + 2) == pytest.approx(1.0)


def test_unrelated_maps_are_dissimilar():
    a, b = smooth_map(4), smooth_map(5)
    c = np.random.default_rng(0).random((64, 64))  # noise against a smooth map
    assert abs(spearman(a, c)) < 0.1
    assert abs(ssim(a, c)) < 0.1
    assert spearman(a, b) < 0.9 and hog_spearman(a, b) < 0.9


def test_constant_maps_have_a_defined_similarity():
    a = torch.tensor(smooth_map(6)[None])
    zero = torch.zeros_like(a)
    for pair in ((a, zero), (zero, a)):
        values = similarity(*pair)
        assert not any(bool(v.isnan().any()) for v in values.values())
        assert float(values["spearman"]) == 0.0
        assert float(values["spearman_abs"]) == 0.0
        assert float(values["hog_spearman"]) == 0.0
        assert abs(float(values["ssim"])) < 0.1
    both = similarity(zero, torch.full_like(a, 3.0))  # no ranking on either side
    assert all(float(v) == 1.0 for v in both.values())


def test_small_maps_still_have_every_measure():
    for size in (20, 5):  # under the 48 px of three 16 px HOG cells, under SSIM's 7 px
        a = torch.tensor(smooth_map(size, size)[None])
        values = similarity(a, a)
        assert all(float(v) == pytest.approx(1.0) for v in values.values())
        other = similarity(a, torch.tensor(smooth_map(size + 1, size)[None]))
        assert all(float(v) < 1.0 for v in other.values())


def test_similarity_refuses_mismatched_maps():
    with pytest.raises(ValueError, match="one shape"):
        similarity(torch.zeros(1, 8, 8), torch.zeros(1, 8, 9))


# ---------------------------------------------------------------- groups


def meta(name: str) -> nn.Module:
    """A torchvision architecture without memory or initialisation (groups need names)."""
    import torchvision

    with torch.device("meta"):
        return torchvision.models.get_model(name, weights=None)


def test_groups_vgg16_one_per_layer_from_the_output():
    names = [g.name for g in randomization_groups(meta("vgg16"))]
    assert len(names) == 16  # 13 conv + 3 linear, SPEC 5 and the paper's Fig. 6
    assert names[:4] == ["classifier.6", "classifier.3", "classifier.0", "features.28"]
    assert names[-1] == "features.0"


def test_groups_vgg16_bn_keep_each_batchnorm_with_its_conv():
    groups = randomization_groups(meta("vgg16_bn"))
    assert len(groups) == 16
    assert groups[-1] == Group("features.0", ("features.0", "features.1"))


def test_groups_resnet_and_lite0_one_per_block():
    names = [g.name for g in randomization_groups(meta("resnet50"))]
    assert names[0] == "fc" and names[-1] == "conv1+bn1"
    assert names[1:-1] == [
        f"layer{s}.{b}" for s, n in ((4, 3), (3, 6), (2, 4), (1, 3)) for b in reversed(range(n))
    ]
    lite = randomization_groups(load_model("efficientnet_lite0", "random").module)
    assert [g.name for g in lite] == [
        "_fc",
        "_conv_head+_bn1",
        *(f"_blocks.{k}" for k in reversed(range(16))),
        "_conv_stem+_bn0",
    ]
    assert lite[1].modules == ("_conv_head", "_bn1")


# ---------------------------------------------------------------- the cascade


@pytest.fixture(scope="module")
def net_and_input():
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return small_cnn(), x


def by_hand(model: nn.Module, groups, seed: int) -> nn.Module:
    """A copy of ``model`` with ``groups`` ((k, group) pairs) randomized by hand."""
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    for k, group in groups:
        randomize([modules[n] for n in group.modules], seed * 1000 + k)
    return work


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_each_step_is_the_model_randomized_by_hand(net_and_input, mode):
    model, x = net_and_input
    groups = randomization_groups(model)
    assert [g.name for g in groups] == ["fc", "conv2", "conv1"]
    steps = list(cascade(model, x, methods=METHODS_CHECKED, seed=3, mode=mode))
    assert [s.group for s in steps] == ["original", "fc", "conv2", "conv1"]
    original = explain(model, x, methods=METHODS_CHECKED)
    for name in METHODS_CHECKED:
        assert torch.equal(steps[0].maps[name], original[name])
        for measure in MEASURES:
            assert torch.equal(steps[0].similarity[name][measure], torch.ones(2).double())
    for k, step in enumerate(steps[1:], 1):
        done = list(enumerate(groups, 1))[:k] if mode == "cascading" else [(k, groups[k - 1])]
        assert step.randomized == tuple(g.name for _, g in done)
        expected = explain(by_hand(model, done, 3), x, original.target, METHODS_CHECKED)
        for name in METHODS_CHECKED:
            assert torch.equal(step.maps[name], expected[name]), (k, name)
            assert step.maps[name].shape == (2, 16, 16)
            for measure in MEASURES:
                value = step.similarity[name][measure]
                assert value.shape == (2,) and not bool(value.isnan().any())
        assert torch.equal(step.target, original.target)  # the original prediction


def test_target_can_be_rederived_at_each_step(net_and_input):
    model, x = net_and_input
    for step in cascade(model, x, methods="vanilla", rederive_target=True):
        assert torch.equal(step.target, step.prediction)


def test_same_seed_same_numbers_other_seed_other_weights(net_and_input):
    model, x = net_and_input

    def run(seed):
        return list(cascade(model, x, methods=("tgrad", "vanilla"), seed=seed))

    first, again, other = run(0), run(0), run(1)
    for a, b, c in zip(first[1:], again[1:], other[1:], strict=True):
        for name in ("tgrad", "vanilla"):
            assert torch.equal(a.maps[name], b.maps[name])
            for measure in MEASURES:
                assert torch.equal(a.similarity[name][measure], b.similarity[name][measure])
        assert not torch.equal(a.maps["vanilla"], c.maps["vanilla"])
    conv = small_cnn().conv1
    weights = []
    for seed in (0, 0, 1):
        randomize([conv], seed)
        weights.append(conv.weight.detach().clone())
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_the_shared_model_and_other_threads_are_untouched(net_and_input):
    model, x = net_and_input
    state = {k: v.clone() for k, v in model.state_dict().items()}
    before = model(x).detach()
    rng = torch.get_rng_state()
    others = [x + 0.1 * k for k in range(4)]
    sequential = [explain(model, o, methods=("tgrad", "vanilla")) for o in others]

    failures: list[str] = []
    done = threading.Event()

    def explain_meanwhile():
        rounds = 0
        while not done.is_set() or rounds < 3:
            for o, expected in zip(others, sequential, strict=True):
                got = explain(model, o, methods=("tgrad", "vanilla"))
                for name in ("tgrad", "vanilla"):
                    if not torch.equal(got[name], expected[name]):
                        failures.append(f"{name} changed during the cascade")
            rounds += 1

    thread = threading.Thread(target=explain_meanwhile)
    thread.start()
    try:
        for mode in ("cascading", "independent"):
            for _ in cascade(model, x, methods=("tgrad", "guided_backprop"), mode=mode):
                pass
    finally:
        done.set()
        thread.join()
    assert not failures
    assert torch.equal(model(x).detach(), before)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(not m._forward_hooks for m in model.modules())


def test_arguments_are_checked_before_any_work(net_and_input):
    model, x = net_and_input
    with pytest.raises(ValueError, match="mode"):
        cascade(model, x, mode="sideways")
    with pytest.raises(ValueError, match="unknown method"):
        cascade(model, x, methods=("nope",))
    with pytest.raises(ValueError, match="no module"):
        next(cascade(model, x, groups=[Group("ghost", ("ghost",))]))


# ---------------------------------------------------------------- guided backprop


class TwoLayers(nn.Module):
    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.act = activation
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x.flatten(1))))


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.ReLU6(), nn.Hardtanh(-0.5, 0.5)])
def test_guided_gradient_by_hand(activation):
    torch.manual_seed(0)
    net = TwoLayers(activation).eval()
    x = torch.randn(3, 1, 2, 2) * 3
    target = torch.tensor([0, 1, 2])
    z = net.fc1(x.flatten(1)).detach()
    lo, hi = (
        (0.0, float("inf"))
        if isinstance(activation, nn.ReLU)
        else (activation.min_val, activation.max_val)
    )
    passes = ((z > lo) & (z < hi)).double()
    upstream = net.fc2.weight.detach()[target].double()  # dy/d(activation output)
    expected = (upstream.clamp(min=0) * passes) @ net.fc1.weight.detach().double()
    rules = {net.act: lambda call, g: g.clamp(min=0)}
    got = capture(net, x, target, rules=rules).input_grad
    assert torch.allclose(got.flatten(1).double(), expected, atol=1e-6)
    maps = explain(net, x, target, methods="guided_backprop")["guided_backprop"]
    assert torch.allclose(maps.double(), expected.abs().view(3, 2, 2), atol=1e-6)


def test_guided_backprop_is_registered_in_the_gradient_family():
    info = METHODS["guided_backprop"]
    assert info.family == "gradient" and info.build is GuidedBackprop
    assert not info.single_pass  # its rewritten backward is a pass of its own


def test_guided_backprop_leaves_the_shared_pass_alone(net_and_input):
    model, x = net_and_input
    together = explain(model, x, methods=("tgrad", "vanilla", "guided_backprop"))
    alone = explain(model, x, methods=("tgrad", "vanilla"))
    assert torch.equal(together["tgrad"], alone["tgrad"])
    assert torch.equal(together["vanilla"], alone["vanilla"])
    assert not torch.equal(together["guided_backprop"], alone["vanilla"])


def test_guided_backprop_equals_captum_on_vgg16():
    captum = pytest.importorskip("captum.attr")
    model = load_model("vgg16", "random").module  # in-place ReLUs only
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([3, 500])
    ours = explain(model, x, target, methods="guided_backprop")["guided_backprop"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum's notice that it hooks the activations
        reference = captum.GuidedBackprop(model).attribute(x.clone(), target=target)
    scale = float(reference.abs().max())
    assert torch.allclose(ours, reference.abs().sum(1), atol=1e-5 * scale, rtol=1e-5)


def test_captum_misses_relu6_which_guided_backprop_covers():
    captum = pytest.importorskip("captum.attr")
    model = load_model("efficientnet_lite0").module  # ReLU6 only
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    maps = explain(model, x, 0, methods=("vanilla", "guided_backprop"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = captum.GuidedBackprop(model).attribute(x.clone(), target=0).abs().sum(1)
    assert torch.allclose(reference, maps["vanilla"], rtol=1e-4, atol=1e-7)  # plain gradient
    assert (maps["guided_backprop"] - maps["vanilla"]).abs().max() > 0.1 * maps["vanilla"].max()


# ---------------------------------------------------------------- Lite0 on a photo

# spearman_abs observed on coffee.jpg, seed 0 (step: T-Grad / Guided Backprop):
#  1 _fc 0.85/0.99, 2 head 0.63/0.97, 3 _blocks.15 0.28/0.97, 6 _blocks.12 0.33/0.94,
#  12 _blocks.6 0.37/0.76, 19 (all random) 0.00/0.31.
TGRAD_AFTER_TOP_BLOCK = 0.5  # classifier, head and _blocks.15 random (observed 0.28)
TGRAD_AFTER_TOP_BLOCKS = 0.6  # any step from there on (observed at most 0.45)
TGRAD_ALL_RANDOM = 0.15  # every group random (observed 0.00)
GUIDED_TOP_HALF = 0.7  # Guided Backprop while the top 10 blocks go random (observed >= 0.76)
GAP_TOP_HALF = 0.25  # Guided minus T-Grad over those steps (observed >= 0.39)


@pytest.fixture(scope="module")
def lite0_coffee_cascade():
    loaded = load_model("efficientnet_lite0")
    x = loaded.preprocessing(load_image(ASSETS / "coffee.jpg"))[None]
    steps = list(cascade(loaded.module, x, methods=("tgrad", "guided_backprop")))
    curves = {
        name: [float(s.similarity[name]["spearman_abs"][0]) for s in steps]
        for name in ("tgrad", "guided_backprop")
    }
    print({name: [round(v, 2) for v in c] for name, c in curves.items()})
    return steps, curves


@pytest.mark.slow  # real Lite0 at 224 px, a 20-step cascade
def test_lite0_tgrad_fails_randomization_guided_backprop_survives(lite0_coffee_cascade):
    steps, curves = lite0_coffee_cascade
    tgrad, guided = curves["tgrad"], curves["guided_backprop"]
    assert len(steps) == 20 and steps[3].group == "_blocks.15"
    assert tgrad[3] < TGRAD_AFTER_TOP_BLOCK
    assert max(tgrad[3:]) < TGRAD_AFTER_TOP_BLOCKS
    assert tgrad[-1] < TGRAD_ALL_RANDOM
    top_half = range(1, 13)  # _fc .. _blocks.6
    assert min(guided[k] for k in top_half) > GUIDED_TOP_HALF
    assert min(guided[k] - tgrad[k] for k in range(3, 13)) > GAP_TOP_HALF
    assert guided[-1] > tgrad[-1]
    for step in steps:  # a constant map (the random model's T-Grad) is never NaN
        for name in ("tgrad", "guided_backprop"):
            for measure in MEASURES:
                assert not bool(step.similarity[name][measure].isnan().any())


# ---------------------------------------------------------------- the CLI


def small_loaded():
    from tgrad.models import LoadedModel, Preprocessing

    return LoadedModel(
        name="small",
        module=small_cnn(),
        preprocessing=Preprocessing(32, 32, "bilinear", (0.5,) * 3, (0.25,) * 3),
        categories=[f"class {k}" for k in range(5)],
        weights="random",
    )


def test_cli_writes_grids_curves_and_csv(tmp_path, monkeypatch, capsys):
    from tgrad import cli

    small = small_loaded()
    monkeypatch.setattr(cli, "load_model", lambda *args, **kwargs: small)
    photos = [str(ASSETS / "coffee.jpg"), str(ASSETS / "rocket.jpg")]
    args = ["sanity", *photos, "--methods", "tgrad", "vanilla", "--out", str(tmp_path)]
    assert cli.main([*args, "--batch-size", "1"]) == 0
    text = capsys.readouterr().out
    assert "conv1" in text and "wrote 2 grid(s)" in text
    for name in ("coffee_sanity.png", "rocket_sanity.png"):
        grid = Image.open(tmp_path / name)
        assert grid.size[0] > 4 * 112 and grid.size[1] > 2 * 112  # 4 steps x 2 methods
    assert Image.open(tmp_path / "sanity_curves.png").size[0] > 600
    with open(tmp_path / "sanity_similarity.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 4 * 2 * len(MEASURES)  # images x steps x methods x measures
    assert {r["group"] for r in rows} == {"original", "fc", "conv2", "conv1"}
    # the curves average the images: the same numbers as one batch of both
    batch = torch.stack([small.preprocessing(load_image(p)) for p in photos])
    last = list(cascade(small.module, batch, methods=("tgrad", "vanilla")))[-1]
    csv_last = [
        float(r["similarity"])
        for r in rows
        if r["step"] == "3" and r["method"] == "vanilla" and r["measure"] == "spearman"
    ]
    assert csv_last == pytest.approx(last.similarity["vanilla"]["spearman"].tolist(), abs=1e-6)
    assert cli.main(["sanity", photos[0], "--methods", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_cli_integrated_gradients_start_from_a_black_image(tmp_path, monkeypatch):
    """The sanity command passes the model's preprocessing, so Integrated Gradients' baseline
    is SPEC 3's black image (pixel 0, normalised), as everywhere else; methods may be
    separated by commas."""
    from tgrad import cli

    small = small_loaded()
    monkeypatch.setattr(cli, "load_model", lambda *args, **kwargs: small)
    photo = str(ASSETS / "chelsea.jpg")
    args = ["sanity", photo, "--methods", "integrated_gradients,vanilla", "--out", str(tmp_path)]
    assert cli.main(args) == 0
    with open(tmp_path / "sanity_similarity.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["method"] == "integrated_gradients"]
    x = small.preprocessing(load_image(photo))[None]
    black = small.preprocessing.normalize(torch.zeros(3, 32, 32))
    options = {"integrated_gradients": {"baseline": black}}
    steps = list(cascade(small.module, x, methods=("integrated_gradients",), options=options))
    expected = {
        (str(s.index), m): float(s.similarity["integrated_gradients"][m][0])
        for s in steps
        for m in MEASURES
    }
    assert len(rows) == len(expected) == 4 * len(MEASURES)
    for row in rows:
        assert float(row["similarity"]) == pytest.approx(
            expected[(row["step"], row["measure"])], abs=1e-6
        )
