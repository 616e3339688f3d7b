"""The Compare tab's callbacks, called directly: numbers against the engine, caching,
streaming order, Stop, and hostile method lists."""

from __future__ import annotations

import threading

import gradio as gr
import numpy as np
import pytest
import torch

import tgrad.methods
from explorer import draw
from explorer.handlers import BUNDLED_PHOTOS, Handlers
from explorer.session import Session
from tests.explorer_files import Request, random_torchvision
from tgrad import viz
from tgrad.methods import METHODS
from tgrad.models import DEFAULT_MODEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the server runs

SINGLE = [name for name, method in METHODS.items() if method.single_pass]
PHOTO = str(BUNDLED_PHOTOS[1])


@pytest.fixture
def counted(monkeypatch) -> list[tuple[str, ...]]:
    """Every call of the methods engine, by the methods it was asked for."""
    calls: list[tuple[str, ...]] = []
    real = tgrad.methods.explain

    def spy(*args, **kwargs):
        calls.append(tuple(kwargs["methods"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(tgrad.methods, "explain", spy)
    return calls


@pytest.fixture(scope="module")
def handlers() -> Handlers:
    return Handlers(Session())


def test_single_pass_methods_come_together_and_equal_the_engine(handlers, counted):
    computed = handlers.session.computed
    steps = list(handlers.compare(PHOTO, DEFAULT_MODEL, None, SINGLE, request=Request("a")))
    explanation = next(iter(handlers.session.explanations._items.values()))
    assert handlers.session.computed == computed + 1  # one T-Grad explanation
    # first what is cached (T-Grad, from the explanation), then the shared pass, once
    assert len(steps) == 2 and counted == [tuple(m for m in SINGLE if m != "tgrad")]
    first, last = steps[0][1]["methods"], steps[1][1]["methods"]
    assert first["tgrad"]["status"] == "done"
    assert all(first[m]["status"] == "pending" for m in SINGLE if m != "tgrad")
    assert all(last[m]["status"] == "done" for m in SINGLE)
    assert {last[m]["shared_pass_of"] for m in SINGLE if m != "tgrad"} == {len(SINGLE) - 1}
    # the maps shown are the engine's, number for number
    reference = tgrad.methods.explain(
        handlers.session.models.get(DEFAULT_MODEL).loaded.module,
        explanation.x,
        target=explanation.target,
        methods=tuple(SINGLE),
    )
    for method in SINGLE:
        shown = handlers.session.maps.get(f"{explanation.key}:{method}")
        if method == "tgrad":
            shown_map = explanation.result.saliency[0]
        else:
            shown_map = shown.map
        torch.testing.assert_close(shown_map, reference[method][0], rtol=1e-5, atol=1e-6)
    # the grid: the photo and one overlay per method, with the one normalisation
    grid = steps[-1][0]
    panels = 1 + len(SINGLE)
    rows = -(-panels // draw.COMPARE_COLUMNS)
    height = rows * (224 + 22 + 6) - 6  # then the colour bar, 6 px under the panels
    bar = viz.colorbar_pixels(viz.DEFAULT_CMAP)
    assert grid.shape == (height + 6 + bar.shape[0], draw.COMPARE_COLUMNS * 230 - 6, 3)
    np.testing.assert_array_equal(grid[height + 6 :, : bar.shape[1]], bar)
    gradcam = handlers.session.maps.get(f"{explanation.key}:gradcam").map
    expected = viz.blend(
        explanation.pixels,
        viz.colorize_unit(viz.robust_normalize(gradcam)),
        draw.COMPARE_ALPHA,
    )
    index = 1 + SINGLE.index("gradcam")
    top = (index // draw.COMPARE_COLUMNS) * 252 + 22
    left = (index % draw.COMPARE_COLUMNS) * 230
    assert np.array_equal(grid[top : top + 224, left : left + 224], expected)


def test_comparing_again_recomputes_nothing(handlers, counted):
    list(handlers.compare(PHOTO, DEFAULT_MODEL, None, ["gradcam", "vanilla"], request=Request("b")))
    counted.clear()
    computed = handlers.session.computed
    steps = list(
        handlers.compare(PHOTO, DEFAULT_MODEL, None, ["vanilla", "gradcam"], request=Request("b"))
    )
    assert counted == [] and handlers.session.computed == computed
    assert len(steps) == 1 and list(steps[0][1]["methods"]) == ["vanilla", "gradcam"]


def test_slow_methods_stream_one_by_one_the_quick_ones_first(handlers, counted):
    """Chosen slow ones first, they still come after Guided Backprop (one pass of its
    own, 0.3 s); IG and SmoothGrad (50 forwards each) keep the order they were chosen in."""
    methods = ["smoothgrad", "gradcam", "integrated_gradients", "guided_backprop"]
    photo = str(BUNDLED_PHOTOS[0])
    steps = list(handlers.compare(photo, DEFAULT_MODEL, None, methods, request=Request("c")))
    assert counted == [
        ("gradcam",),
        ("guided_backprop",),
        ("smoothgrad",),
        ("integrated_gradients",),
    ]
    statuses = [[step[1]["methods"][m]["status"] for m in methods] for step in steps]
    assert statuses == [
        ["pending", "pending", "pending", "pending"],
        ["pending", "done", "pending", "pending"],
        ["pending", "done", "pending", "done"],
        ["done", "done", "pending", "done"],
        ["done", "done", "done", "done"],
    ]


def test_stop_ends_the_running_method(handlers):
    # the Stop button of this page sets the flag while SmoothGrad runs: it gives up at its
    # next progress report, and the grid says what was stopped
    photo = str(BUNDLED_PHOTOS[2])
    request = Request("stop-me")
    reports: list[float] = []

    def progress(fraction, desc=None):
        if desc == "computing smoothgrad":
            reports.append(fraction)
            if len(reports) == 2:  # SmoothGrad's first chunk is done: press Stop
                stopper = threading.Thread(target=handlers.stop_compare, args=(request,))
                stopper.start()
                stopper.join()

    steps = list(
        handlers.compare(
            photo,
            DEFAULT_MODEL,
            None,
            ["vanilla", "smoothgrad"],
            request=request,
            progress=progress,
        )
    )
    final = steps[-1][1]["methods"]
    assert final["vanilla"]["status"] == "done"
    assert final["smoothgrad"]["status"] == "stopped"
    assert len(reports) == 2  # no report after Stop: the next chunk's raised
    assert handlers.runs.running() == 0  # no token kept after the run
    explanation = handlers.session.lookup(handlers.compute(photo, DEFAULT_MODEL, None).key)
    assert handlers.session.maps.get(f"{explanation.key}:smoothgrad") is None


@pytest.mark.parametrize(
    "methods",
    [None, [], "nonsense", ["gradcam", "nonsense"], [1, 2], ["gradcam"] * 50, {"a": 1}],
)
def test_hostile_method_lists_are_refused(handlers, methods):
    with pytest.raises(gr.Error) as caught:
        next(handlers.compare(PHOTO, DEFAULT_MODEL, None, methods, request=Request("d")))
    assert len(str(caught.value)) < 300 and "nonsense" not in str(caught.value)


def test_a_single_method_name_is_accepted(handlers):
    steps = list(handlers.compare(PHOTO, DEFAULT_MODEL, None, "gradcam", request=Request("e")))
    assert list(steps[-1][1]["methods"]) == ["gradcam"]
    assert steps[-1][1]["methods"]["gradcam"]["layer"]


def test_the_grid_follows_the_chosen_colour_map_and_carries_its_colour_bar(handlers):
    steps = list(
        handlers.compare(PHOTO, DEFAULT_MODEL, None, ["gradcam"], "jet", request=Request("f"))
    )
    grid = steps[-1][0]
    explanation = handlers.session.lookup(handlers.compute(PHOTO, DEFAULT_MODEL, None).key)
    gradcam = handlers.session.maps.get(f"{explanation.key}:gradcam").map
    jet = viz.colorize_unit(viz.robust_normalize(gradcam), "jet")
    expected = viz.blend(explanation.pixels, jet, draw.COMPARE_ALPHA)
    np.testing.assert_array_equal(grid[22 : 22 + 224, 230 : 230 + 224], expected)
    bar = viz.colorbar_pixels("jet")
    np.testing.assert_array_equal(grid[-bar.shape[0] :, : bar.shape[1]], bar)
    with pytest.raises(gr.Error, match="colour map must be one of"):
        next(handlers.compare(PHOTO, DEFAULT_MODEL, None, ["gradcam"], "<b>hot</b>"))


def test_integrated_gradients_gets_the_named_black_baseline_and_reports_its_delta(monkeypatch):
    """Issue 16's leftovers: the session asks for the registry's named "black" baseline
    through the model's preprocessing (not a tensor of its own), and Compare's timings
    carry IG's convergence delta (SPEC 3), the engine's number."""
    calls: list[dict] = []
    real = tgrad.methods.explain

    def spy(*args, **kwargs):
        calls.append(kwargs["options"])
        return real(*args, **kwargs)

    monkeypatch.setattr(tgrad.methods, "explain", spy)
    handlers = Handlers(Session(loader=random_torchvision), ["resnet18"])
    ig = "integrated_gradients"
    steps = list(handlers.compare(PHOTO, "resnet18", None, [ig], request=Request("ig")))
    explanation = handlers.compute(PHOTO, "resnet18", None)
    asked = calls[-1][ig]
    assert asked["preprocessing"] is explanation.preprocessing and "baseline" not in asked
    assert METHODS[ig].options["baseline"] == "black"  # the registry's default, named
    shown = steps[-1][1]["methods"][ig]
    module = handlers.session.models.get("resnet18").loaded.module
    reference = real(
        module, explanation.x, target=explanation.target, methods=(ig,), options=calls[-1]
    )
    expected = float(reference.convergence_delta[ig][0])
    assert shown["convergence_delta"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    # the named baseline is the black image the explorer used to build itself
    black = explanation.preprocessing.normalize(torch.zeros_like(explanation.x[0]))
    explicit = real(
        module,
        explanation.x,
        target=explanation.target,
        methods=(ig,),
        options={ig: {"baseline": black, "batch_size": asked["batch_size"]}},
    )
    cached = handlers.session.maps.get(f"{explanation.key}:{ig}")
    torch.testing.assert_close(cached.map, explicit[ig][0], rtol=1e-5, atol=1e-7)
    assert "convergence_delta" not in steps[-1][1]["methods"].get("gradcam", {})
