"""The Sanity tab's callbacks, called directly: the engine's numbers, the shared model
untouched while others explain, Stop, the measure selector, hostile values."""

from __future__ import annotations

import threading

import gradio as gr
import numpy as np
import pytest
import torch

from explorer import explanation
from explorer.explanation import SANITY_MAP_SIZE
from explorer.handlers import BUNDLED_PHOTOS, Handlers
from explorer.session import Session
from tests.explorer_files import Request
from tgrad import viz
from tgrad.models import DEFAULT_MODEL
from tgrad.sanity import MEASURES, cascade, randomization_groups

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the server runs


PHOTO = str(BUNDLED_PHOTOS[0])
METHODS = ["vanilla", "gradcam"]  # the cheapest single-pass pair: a quick full cascade


@pytest.fixture(scope="module")
def handlers() -> Handlers:
    return Handlers(Session())


@pytest.fixture(scope="module")
def run(handlers):
    """Every yield of a full cascade of Vanilla and GradCAM on the astronaut."""
    model = handlers.session.models.get(DEFAULT_MODEL).loaded.module
    probe = torch.linspace(-2, 2, 3 * 224 * 224).reshape(1, 3, 224, 224)
    with torch.no_grad():
        before = model(probe)
    steps = list(handlers.sanity(PHOTO, DEFAULT_MODEL, None, METHODS, "ssim", request=Request("r")))
    with torch.no_grad():
        after = model(probe)
    return steps, before, after


def test_a_step_per_group_and_the_engines_numbers(handlers, run):
    steps, _, _ = run
    explanation = handlers.session.lookup(handlers.compute(PHOTO, DEFAULT_MODEL, None).key)
    model = handlers.session.models.get(DEFAULT_MODEL).loaded.module
    groups = randomization_groups(model)
    assert len(steps) == len(groups) + 1
    numbers = steps[-1][2]
    assert [s["group"] for s in numbers["steps"]] == ["original", *(g.name for g in groups)]
    reference = cascade(model, explanation.x, torch.tensor([explanation.target]), METHODS)
    for shown, step in zip(numbers["steps"], reference, strict=True):
        for method in METHODS:
            for measure in MEASURES:
                expected = float(step.similarity[method][measure][0])
                assert shown["similarity"][method][measure] == pytest.approx(expected, abs=1e-9)
    # the grid: one row per method, one column per step (ten a band), each a small map
    bands = -(-(len(groups) + 1) // viz.SANITY_COLUMNS)
    assert steps[-1][0].shape == (
        bands * len(METHODS) * (SANITY_MAP_SIZE + viz.SANITY_TITLE + 3) - 3,
        viz.SANITY_COLUMNS * (SANITY_MAP_SIZE + 3) - 3,
        3,
    )
    # the plot: one line per method, one point per step so far, the chosen measure
    lines = steps[5][1].axes[0].get_lines()
    assert [len(line.get_xdata()) for line in lines if line.get_label()[0] != "_"] == [6, 6]
    assert steps[5][1].axes[0].get_title() == "SSIM (structural similarity)"


def test_the_shared_model_is_untouched(run):
    _, before, after = run
    assert torch.equal(before, after)


def test_the_measure_selector_redraws_from_the_cache(handlers, run):
    key = run[0][-1][3]
    figure = handlers.sanity_measure(key, "hog_spearman")
    assert figure.axes[0].get_title() == "Spearman of HOG features (edges)"
    assert handlers.sanity_measure("unknown", "ssim") == gr.skip()
    with pytest.raises(gr.Error, match="measure must be one of"):
        handlers.sanity_measure(key, "<b>" + "x" * 1000)
    # running again is served from the cache: one step, complete
    again = list(
        handlers.sanity(PHOTO, DEFAULT_MODEL, None, METHODS, "ssim", request=Request("r2"))
    )
    assert len(again) == 1 and len(again[0][2]["steps"]) == len(run[0])


def test_others_explain_while_a_cascade_runs(handlers, run):
    photo = str(BUNDLED_PHOTOS[3])
    alone = handlers.explain(photo, DEFAULT_MODEL, "968: cup", 0.5)
    handlers.session.explanations.clear()
    handlers.session.sanity_runs.clear()
    results = {}
    cascading = threading.Thread(
        target=lambda: results.setdefault(
            "sanity", list(handlers.sanity(PHOTO, DEFAULT_MODEL, None, ["vanilla"]))
        )
    )
    cascading.start()
    together = handlers.explain(photo, DEFAULT_MODEL, "968: cup", 0.5)
    cascading.join(300)
    assert cascading.is_alive() is False and len(results["sanity"]) == len(run[0])
    np.testing.assert_array_equal(together[0], alone[0])
    assert together[2] == alone[2]  # every number of the decomposition


def test_stop_ends_the_cascade_before_the_next_step(handlers):
    request = Request("stop-me")
    handlers.session.sanity_runs.clear()
    seen = []
    for step in handlers.sanity(PHOTO, DEFAULT_MODEL, None, ["vanilla"], None, request=request):
        seen.append(step)
        if len(seen) == 3:
            handlers.stop_sanity(request)
    # the fourth step was never computed; a last view keeps the three done, says stopped
    assert len(seen) == 4 and len(seen[-1][2]["steps"]) == 3
    assert seen[-1][2]["status"] == "stopped" and seen[2][2]["status"] == "running"
    assert len(handlers.session.sanity_runs) == 0  # a stopped run is not cached
    assert handlers.runs.running() == 0


@pytest.mark.parametrize("measure", ["pearson", 3, ["ssim"]])
def test_unknown_measures_are_refused(handlers, measure):
    with pytest.raises(gr.Error, match="measure must be one of"):
        next(handlers.sanity(PHOTO, DEFAULT_MODEL, None, ["vanilla"], measure))


def test_render_titles():
    assert explanation.method_label("guided_backprop") == "Guided Backprop"
