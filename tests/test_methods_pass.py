"""The promises of ``tgrad.methods.explain`` beyond agreement: the registry, one shared pass
giving what each method gives alone, batches giving their images one by one, hooks
released and the model untouched (also on errors), progress, seeds, CAM layers."""

import pytest
import torch
import torchvision
from torch import nn

from tests.nets import perturb, small_cnn
from tests.test_tgrad import Exploding, hooks_left
from tgrad.methods import METHODS, Pass, explain
from tgrad.methods.cam import default_layer

NAMES = (
    "tgrad",
    "gradcam",
    "gradcam++",
    "xgradcam",
    "eigencam",
    "scorecam",
    "fullgrad",
    "vanilla",
    "input_x_gradient",
    "integrated_gradients",
    "smoothgrad",
)
FAST = {  # few steps and samples: these tests are about plumbing, not convergence
    "integrated_gradients": {"steps": 3, "batch_size": 4, "baseline": "zero"},
    "smoothgrad": {"samples": 3, "batch_size": 4},
    "scorecam": {"batch_size": 3},
}


def test_registry():
    assert set(NAMES) <= set(METHODS)
    single = {"tgrad", "gradcam", "gradcam++", "xgradcam", "eigencam", "fullgrad", "vanilla"}
    single |= {"input_x_gradient"}
    for name in NAMES:
        info = METHODS[name]
        assert info.name == name
        assert info.single_pass == (name in single)
        assert info.description and "\n" not in info.description
    families = {n: METHODS[n].family for n in NAMES}
    assert {n for n, f in families.items() if f == "bias"} == {"tgrad", "fullgrad"}
    assert {n for n, f in families.items() if f == "cam"} == {
        "gradcam",
        "gradcam++",
        "xgradcam",
        "eigencam",
        "scorecam",
    }
    assert METHODS["integrated_gradients"].options["steps"] == 50
    assert METHODS["smoothgrad"].options["samples"] == 50
    assert METHODS["smoothgrad"].options["noise_level"] == 0.15  # SPEC 3
    assert METHODS["smoothgrad"].options["sigma"] is None  # an absolute sigma when given
    assert METHODS["integrated_gradients"].options["baseline"] == "black"  # SPEC 3
    assert "sign" in METHODS["eigencam"].description  # its sign correction, named
    assert METHODS["scorecam"].options["batch_size"] == 16
    assert all(METHODS[n].options["layer"] is None for n in families if families[n] == "cam")
    with pytest.raises(TypeError):
        METHODS["smoothgrad"].options["samples"] = 1  # read-only


NEEDS = {  # SPEC 3's methods and what each reads, written out by hand
    "tgrad": Pass.GRADIENTS,  # the gradients at every term
    "gradcam": Pass.GRADIENTS,  # dy/dA at its layer
    "gradcam++": Pass.GRADIENTS,
    "xgradcam": Pass.GRADIENTS,
    "eigencam": Pass.FORWARD,  # the activation alone
    "scorecam": Pass.OWN,  # one forward per channel
    "fullgrad": Pass.GRADIENTS,
    "vanilla": Pass.BACKWARD,  # dy/dx
    "input_x_gradient": Pass.BACKWARD,
    "integrated_gradients": Pass.OWN,  # dy/dx along a path
    "smoothgrad": Pass.OWN,  # dy/dx at noisy copies
    "guided_backprop": Pass.OWN,  # a rewritten backward
    "random": Pass.FORWARD,  # the input's size
    "edge": Pass.FORWARD,  # the input's values
}


def test_each_method_declares_once_what_pass_it_needs():
    assert set(NEEDS) == set(METHODS)
    for name, info in METHODS.items():
        assert info.needs is NEEDS[name], name
        assert info.single_pass == (NEEDS[name] is not Pass.OWN), name
    assert {n for n, p in NEEDS.items() if p.backward} == {
        n for n, p in NEEDS.items() if p in (Pass.BACKWARD, Pass.GRADIENTS)
    }


class _CountBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _CountBackward.count += 1
        return grad


class BackwardCounter(nn.Module):
    """Counts the backward passes that reach the model's input (the first conv's input)."""

    def forward(self, x):
        return _CountBackward.apply(x)


def counted(model):
    _CountBackward.count = 0
    return nn.Sequential(BackwardCounter(), model).eval()


@pytest.mark.parametrize(
    ("methods", "backwards"),
    [
        ("guided_backprop", 1),  # its own backward; the shared pass is a forward for it
        ("eigencam", 0),  # the activation alone; its layer found by a forward
        ("gradcam", 1),  # the shared backward only: its layer found by a forward
        (("vanilla", "gradcam", "eigencam"), 1),
        (("vanilla", "guided_backprop"), 2),  # the shared backward and its own
        ("random", 0),
    ],
)
def test_backward_passes_reaching_the_input(methods, backwards):
    model, x = counted(small_cnn()), batch()
    explain(model, x, methods=methods)
    assert _CountBackward.count == backwards


def test_the_cam_layer_is_found_without_a_backward():
    model, x = counted(small_cnn()), batch()
    assert default_layer(model, x) == "1.act2"
    assert _CountBackward.count == 0


def batch(seed=0, n=3):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_shapes_device_and_layers():
    model, x = small_cnn(), batch()
    maps = explain(model, x, methods="all", options=FAST)
    assert list(maps) == list(METHODS)
    for name, m in maps.items():
        assert m.shape == (3, 16, 16), name
        assert m.device == x.device and m.dtype == x.dtype
        assert torch.isfinite(m).all(), name
    cams = {n for n in METHODS if METHODS[n].family == "cam"}
    assert maps.layers == dict.fromkeys(cams, "act2")  # in-place ReLU6 feeding the pooling
    assert set(maps.seconds) == set(METHODS) and maps.pass_seconds > 0
    assert torch.equal(maps.target, maps.logits.argmax(1))


def test_shared_pass_equals_each_method_alone():
    model, x = small_cnn(), batch(1)
    together = explain(model, x, target=[0, 1, 2], methods="all", options=FAST)
    for name in METHODS:
        alone = explain(model, x, target=[0, 1, 2], methods=name, options=FAST)
        torch.testing.assert_close(together[name], alone[name], rtol=1e-5, atol=1e-7)


def test_shared_pass_on_resnet_with_a_layer_inside_an_in_place_block():
    """A CAM layer whose output a later ``out += identity`` changes in place is kept as
    the module returned it, and T-Grad in the same pass is unchanged."""
    torch.manual_seed(0)
    model = perturb(torchvision.models.resnet18(weights=None))
    x = batch(2, 2).repeat(1, 1, 4, 4)  # 64 x 64
    options = {"gradcam": {"layer": "layer4.1.bn2"}, "eigencam": {"layer": "layer4.1.bn2"}}
    methods = ("tgrad", "gradcam", "eigencam", "fullgrad")
    together = explain(model, x, methods=methods, options=options)
    for name in methods:
        alone = explain(model, x, methods=name, options=options)
        torch.testing.assert_close(together[name], alone[name], rtol=1e-5, atol=1e-7)
    assert together.layers["gradcam"] == "layer4.1.bn2"
    activations = {}
    handle = model.layer4[1].bn2.register_forward_hook(
        lambda m, i, o: activations.update(a=o.detach().clone())  # returns None
    )
    with torch.no_grad():
        model(x)
    handle.remove()
    # EigenCAM depends on the activation only: recompute it from the true one
    a = activations["a"]
    rows = a.flatten(2).transpose(1, 2)
    rows = rows - rows.mean(1, keepdim=True)
    u, s, _ = torch.linalg.svd(rows, full_matrices=False)
    p = u[..., 0] * s[:, :1]
    p = torch.where((p.amin(1).abs() > p.amax(1).abs())[:, None], -p, p)
    small = explain(model, x, methods="eigencam", options=options)["eigencam"]
    expected = nn.functional.interpolate(
        p.clamp(min=0).view(2, 1, *a.shape[-2:]), size=(64, 64), mode="bilinear"
    )[:, 0]
    torch.testing.assert_close(small, expected, rtol=1e-4, atol=1e-5)


def test_batch_equals_one_by_one():
    model, x = small_cnn(), batch(3, 3)
    targets = [2, 0, 4]
    together = explain(model, x, target=targets, methods="all", options=FAST)
    for i in range(3):
        one = explain(model, x[i : i + 1], target=targets[i], methods="all", options=FAST)
        for name in METHODS:
            torch.testing.assert_close(one[name][0], together[name][i], rtol=1e-4, atol=1e-6)


def test_stochastic_methods_are_seeded():
    model, x = small_cnn(), batch(4, 2)
    first = explain(model, x, methods="smoothgrad", options=FAST)["smoothgrad"]
    again = explain(model, x, methods="smoothgrad", options=FAST)["smoothgrad"]
    assert torch.equal(first, again)
    other = {"smoothgrad": {**FAST["smoothgrad"], "seed": 1}}
    assert not torch.equal(
        first, explain(model, x, methods="smoothgrad", options=other)["smoothgrad"]
    )
    chunked = {"smoothgrad": {**FAST["smoothgrad"], "batch_size": 2}}  # chunks don't matter
    torch.testing.assert_close(
        explain(model, x, methods="smoothgrad", options=chunked)["smoothgrad"], first
    )


def test_progress_is_reported():
    model, x = small_cnn(), batch(5, 2)
    seen = []
    explain(
        model,
        x,
        methods=("integrated_gradients", "smoothgrad", "scorecam"),
        options=FAST,
        progress=lambda method, done, total: seen.append((method, done, total)),
    )
    for method in ("integrated_gradients", "smoothgrad", "scorecam"):
        steps = [(d, t) for m, d, t in seen if m == method]
        assert steps and steps[-1][0] == steps[-1][1], method
        assert [d for d, _ in steps] == sorted(d for d, _ in steps)


def test_default_cam_layers_follow_spec_3():
    from tgrad.models import load_model

    x = torch.zeros(1, 3, 64, 64)
    expected = {"vgg16": "features", "resnet50": "layer4", "efficientnet_lite0": "_act1"}
    for name, layer in expected.items():
        assert default_layer(load_model(name, weights="random").module, x) == layer


def test_layer_override_and_errors():
    model, x = small_cnn(), batch(6, 1)
    maps = explain(model, x, methods="gradcam", options={"gradcam": {"layer": "bn2"}})
    assert maps.layers == {"gradcam": "bn2"}
    with pytest.raises(ValueError, match="no module named 'nope'"):
        explain(model, x, methods="gradcam", options={"gradcam": {"layer": "nope"}})
    with pytest.raises(ValueError, match="unknown method"):
        explain(model, x, methods="gradcam+++")
    with pytest.raises(ValueError, match="has no option"):
        explain(model, x, methods="gradcam", options={"gradcam": {"steps": 3}})
    with pytest.raises(ValueError, match="at least 2 steps"):
        explain(
            model,
            x,
            methods="integrated_gradients",
            options={"integrated_gradients": {"steps": 1, "baseline": "zero"}},
        )


def snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(m.training, getattr(m, "inplace", None)) for m in model.modules()],
    )


def assert_untouched(model: nn.Module, before, x, output):
    state, flags = before
    assert hooks_left(model) == 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert flags == [(m.training, getattr(m, "inplace", None)) for m in model.modules()]
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(x), output)


def test_model_untouched_and_no_hook_left_also_on_errors():
    model, x = small_cnn(), batch(7, 2)
    with torch.no_grad():
        output = model(x)
    before = snapshot(model)
    explain(model, x, methods="all", options=FAST)
    assert_untouched(model, before, x, output)
    failing = [
        ({"target": 99}, ValueError),  # inside the shared pass, after the forward
        ({"options": {"integrated_gradients": {"steps": 0, "baseline": "zero"}}}, ValueError),
        ({"options": {"smoothgrad": {"samples": 0}}}, ValueError),
    ]
    for kwargs, error in failing:
        with pytest.raises(error):
            explain(model, x, methods="all", **{"options": FAST, **kwargs})
        assert_untouched(model, before, x, output)
    broken = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), Exploding()).eval()
    with pytest.raises(RuntimeError, match="boom"):
        explain(broken, x, methods=("fullgrad", "gradcam"), options={"gradcam": {"layer": "1"}})
    assert hooks_left(broken) == 0


def test_fullgrad_reduces_each_term_on_arrival_and_leaves_tgrad_terms_bit_identical():
    """FullGrad's per-term reducer (the collector's ``on_term``) sees every term once, keeps
    no element-wise C, and does not change the terms T-Grad reads."""
    from tgrad.capture import capture
    from tgrad.decompose import TermCollector
    from tgrad.methods.bias import FullGradMaps, fullgrad_postprocess

    torch.manual_seed(0)
    model = perturb(torchvision.models.mobilenet_v2(weights=None))
    x = batch(8, 2).repeat(1, 1, 4, 4)  # 64 x 64
    results = []
    for on_term in (None, FullGradMaps()):
        collector = TermCollector(on_term=on_term)
        record = capture(model, x, None, on_op=collector.on_op, on_unseen=collector.on_unseen)
        results.append((collector.finish(record), on_term))
    (plain, _), (reduced, maps) = results
    assert [t.name for t in plain] == [t.name for t in reduced]
    for a, b in zip(plain, reduced, strict=True):
        assert torch.equal(a.contribution, b.contribution), a.name
        assert (a.map is None) == (b.map is None) and (a.map is None or torch.equal(a.map, b.map))
        assert b.elementwise is None
    kept = TermCollector(keep_elementwise=True)
    record = capture(model, x, None, on_op=kept.on_op, on_unseen=kept.on_unseen)
    expected: dict = {}
    for term in kept.finish(record):
        if term.spatial:
            part = fullgrad_postprocess(term.elementwise)
            expected[term.grid] = expected.get(term.grid, 0) + part
    assert set(maps.by_grid) == set(expected)
    for grid, m in expected.items():
        torch.testing.assert_close(maps.by_grid[grid], m, rtol=1e-5, atol=1e-5)
    together = explain(model, x, methods=("tgrad", "fullgrad"))["tgrad"]
    assert torch.equal(together, explain(model, x, methods="tgrad")["tgrad"])


class PointerSpy(nn.Module):
    """Records the size and the storage of every input it is called with."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[int, int]] = []

    def forward(self, x):
        self.seen.append((x.shape[0], x.untyped_storage().data_ptr()))
        return self.inner(x)


@pytest.mark.parametrize(
    ("method", "gradients", "images"),
    [("integrated_gradients", True, 2), ("smoothgrad", True, 2), ("scorecam", False, 3)],
)
def test_slow_methods_chunk_by_the_memory_budget_in_one_buffer(
    monkeypatch, method, gradients, images
):
    """A budget of ``images + 0.5`` images (tgrad.budget's cost of one) caps every chunk at
    ``images`` however large ``batch_size`` is; every chunk is written into the same
    buffer; the map is the one of unbounded chunks."""
    from tgrad.budget import BUDGET_ENV, image_bytes

    model, x = small_cnn(), batch(9, 2)
    options = {
        "integrated_gradients": {"steps": 5, "batch_size": 64, "baseline": "zero"},
        "smoothgrad": {"samples": 5, "batch_size": 64},
        "scorecam": {"batch_size": 64},
    }
    free = explain(model, x, [1, 3], method, options)[method]
    spy = PointerSpy(model).eval()
    cost = image_bytes(spy, x, gradients)
    spy.seen.clear()
    monkeypatch.setenv(BUDGET_ENV, str((images + 0.5) * cost / 2**20))
    capped = explain(spy, x, [1, 3], method, options)[method]
    torch.testing.assert_close(capped, free, rtol=1e-6, atol=1e-9)
    # after the shared pass; ScoreCAM: after finding its layer, the pass and its zero mask
    chunks = spy.seen[3 if method == "scorecam" else 1 :]
    assert len(chunks) > 1 and max(n for n, _ in chunks) == images
    assert len({pointer for _, pointer in chunks}) == 1  # one buffer for every chunk
