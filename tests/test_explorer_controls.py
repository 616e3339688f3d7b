"""Issue 17 in the explorer: the controls (a random map, an edge detector) in every tab,
listed last and greyed in Evaluate, the edge map constant through the Sanity tab's
cascade, left unticked in Compare, and every picker label led by its family."""

from __future__ import annotations

import pytest
import torch

from explorer import draw, explanation, widgets
from explorer.handlers import BUNDLED_PHOTOS, Handlers
from explorer.session import Session
from explorer.tabs import compare as compare_tab
from explorer.tabs import evaluate as evaluate_tab
from explorer.tabs import sanity as sanity_tab
from explorer.ui import build_demo
from tests.explorer_files import Request
from tgrad.methods import METHODS
from tgrad.methods.controls import is_control
from tgrad.models import DEFAULT_MODEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the server runs

PHOTO = str(BUNDLED_PHOTOS[0])
CONTROLS = [name for name in METHODS if is_control(name)]


@pytest.fixture(scope="module")
def handlers() -> Handlers:
    return Handlers(Session())


def test_every_picker_offers_the_controls_last_labelled_by_family():
    choices = widgets.method_choices()
    assert [name for _, name in choices][-len(CONTROLS) :] == CONTROLS
    assert {name for _, name in choices} == set(METHODS)
    for label, name in choices:
        family = widgets.FAMILY_NAMES[METHODS[name].family]
        assert label.startswith(f"{family} · ")
    labels = dict((name, label) for label, name in choices)
    assert labels["random"] == "control · Random" and labels["edge"] == "control · Edge detector"
    # Compare ticks every single-pass method but the controls; Evaluate ticks the random
    # floor; the Sanity check the edge detector
    compare = compare_tab.default_methods()
    assert not any(is_control(m) for m in compare)
    assert set(compare) == {m for m, info in METHODS.items() if info.single_pass} - set(CONTROLS)
    assert "random" in evaluate_tab.DEFAULT_METHODS and "edge" in sanity_tab.DEFAULT_METHODS


def test_evaluate_lists_the_controls_last_greyed(handlers):
    asked = ["random", "gradcam", "edge", "tgrad"]
    shown = list(handlers.evaluate(PHOTO, DEFAULT_MODEL, None, asked, 4, request=Request("e")))
    insertion, deletion, table = shown[-1]
    names = [row[0] for row in table]
    controls = [explanation.method_label(m) for m in ("random", "edge")]
    assert names == ["GradCAM", "T-Grad", *controls]
    for figure in (insertion, deletion):
        styles = {line.get_label(): line for line in figure.axes[0].get_lines()}
        for label, line in styles.items():
            control = label.startswith(tuple(controls))
            assert (line.get_linestyle() == "--") == control, label
            assert (line.get_color() == draw.CONTROL_STYLE["color"]) == control, label
        legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
        assert legend[-2:] == [t for t in legend if t.startswith(tuple(controls))]
    # the page's table (the component as built) greys the controls' rows, nothing else
    built = build_demo(handlers.session)
    scores = next(b for b in built.blocks.values() if getattr(b, "elem_id", None) == "scores")
    out = scores.postprocess(table)
    assert out.data == table  # the API's numbers are the handler's
    styling = out.metadata["styling"]
    for row, style in zip(table, styling, strict=True):
        grey = row[0] in controls
        assert style == [draw.CONTROL_CELLS if grey else ""] * len(row), row[0]


def test_the_edge_map_stays_constant_while_the_model_is_destroyed(handlers):
    asked = ["edge", "vanilla"]
    shown = list(handlers.sanity(PHOTO, DEFAULT_MODEL, None, asked, request=Request("s")))
    _, curves, numbers, key = shown[-1]
    assert numbers["status"] == "done"
    run = handlers.session.sanity_runs.get(key)
    assert run.methods == ("vanilla", "edge")  # the control last: the grid's last row
    first = run.steps[0].maps["edge"]
    for step in run.steps[1:]:
        assert torch.equal(step.maps["edge"], first), step.group  # blind to the weights
        assert step.similarity["edge"]["spearman_abs"] == pytest.approx(1.0, abs=1e-6)
        assert step.similarity["edge"]["ssim"] == pytest.approx(1.0, abs=1e-6)
    # the last randomized step destroyed vanilla's map, but not the edges
    assert run.steps[-1].similarity["vanilla"]["spearman_abs"] < 0.9
    lines = {line.get_label(): line for line in curves.axes[0].get_lines()}
    edge = lines[explanation.method_label("edge")]
    assert edge.get_linestyle() == "--" and edge.get_color() == draw.CONTROL_STYLE["color"]
    assert lines[explanation.method_label("vanilla")].get_linestyle() == "-"
