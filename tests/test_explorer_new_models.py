"""Issue 14 in the explorer: models exact through tangent intercepts (random-weight
EfficientNet-B0 with SiLU and squeeze-excite, ConvNeXt-T with GELU and layer norms, at a
64 px input) go through every tab unchanged, and the Explain tab names the new kinds.

The oracle for the numbers is the engine itself, called directly on the same input."""

from __future__ import annotations

import pytest
import torch

from explorer.chart import chart_html, kind_text
from explorer.handlers import Handlers
from explorer.session import Session
from explorer.tabs import explain_draw
from explorer.view import ALONE
from tests.explorer_files import PHOTOS, Request, random_torchvision
from tgrad.decompose import completeness_tolerance, how_exact
from tgrad.tgrad import TGrad

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the server runs

MODELS = ("efficientnet_b0", "convnext_tiny")
PHOTO = str(PHOTOS["coffee"])


@pytest.fixture(scope="module")
def handlers() -> Handlers:
    return Handlers(Session(loader=random_torchvision), list(MODELS))


@pytest.mark.parametrize("model", MODELS)
def test_explain_shows_the_engines_terms_with_kind_and_source(handlers, model):
    overlay, _, numbers, key = handlers.explain(PHOTO, model, None, 0.5, progress=None)
    explanation = handlers.session.lookup(key)
    assert overlay.shape[:2] == (64 * handlers.session.display,) * 2
    module = handlers.session.models.get(model).loaded.module
    reference = TGrad(module)(explanation.x, explanation.target)
    terms = numbers["terms"]
    assert [(t["term"], t["kind"], t["source"]) for t in terms] == [
        (t.name, t.kind, t.source) for t in reference.terms
    ]
    for shown, term in zip(terms, reference.terms, strict=True):
        assert shown["contribution"] == pytest.approx(float(term.contribution[0]), abs=1e-5)
    # completeness on the page's numbers: the terms plus the gap are the logit
    total = sum(t["contribution"] for t in terms)
    assert total + numbers["gap"] == pytest.approx(numbers["logit"], abs=1e-5)
    assert abs(numbers["gap"]) <= float(completeness_tolerance(reference.logit)[0])
    assert numbers["exactness"] == how_exact(reference.terms)
    assert "intercepts" in numbers["exactness"]
    # the chart's table and tooltips carry each term's kind in words and its source
    chart = chart_html(explanation, 0, ALONE)
    for term in reference.terms[1:]:
        assert kind_text(term.kind, term.source) in chart
    assert how_exact(reference.terms) in explain_draw.summary(explanation)


def test_squeeze_excite_gates_and_layer_norms_are_named(handlers):
    """SPEC 2's new kinds reach the layer names, the chart and the slider's caption."""
    named = {}
    for model in MODELS:
        explanation = handlers.compute(PHOTO, model, None)
        named[model] = explanation
        for position in range(explanation.positions):
            caption = explain_draw.layer_caption(explanation, position, ALONE)
            assert explanation.title(explanation.term_indices[position]) in caption
    b0, convnext = named["efficientnet_b0"], named["convnext_tiny"]
    gates = [k for k, t in enumerate(b0.result.terms) if t.kind == "gate"]
    assert gates  # every MBConv block of B0 has a squeeze-excite gate
    for k in gates:
        assert " · squeeze-excite gate · " in b0.title(k)
        assert b0.title(k).startswith("Block ")
    assert "gate intercept (mul)" in chart_html(b0, 0, ALONE)
    norms = [k for k, t in enumerate(convnext.result.terms) if t.kind == "norm"]
    assert norms and all("layer norm" in convnext.title(k) for k in norms)
    assert "norm intercept (LayerNorm" in chart_html(convnext, 0, ALONE)


@pytest.mark.parametrize("model", MODELS)
def test_compare_runs_every_single_pass_method_and_the_controls(handlers, model):
    methods = ["tgrad", "gradcam", "fullgrad", "vanilla", "guided_backprop", "random", "edge"]
    shown = list(handlers.compare(PHOTO, model, None, methods, request=Request("c" + model)))
    grid, timings = shown[-1]
    assert grid.ndim == 3 and grid.dtype.name == "uint8"
    assert {m: r["status"] for m, r in timings["methods"].items()} == dict.fromkeys(methods, "done")
    explanation = handlers.compute(PHOTO, model, None)
    maps = handlers.session.maps
    tgrad = explanation.result.saliency[0]
    for method in methods[1:]:
        found = maps.get(f"{explanation.key}:{method}")
        assert found is not None and found.map.shape == tgrad.shape
        assert torch.isfinite(found.map).all()


def test_evaluate_scores_a_model_exact_through_intercepts(handlers):
    methods = ["tgrad", "gradcam", "edge", "random"]
    model = "efficientnet_b0"
    shown = list(handlers.evaluate(PHOTO, model, None, methods, 4, request=Request("e")))
    _, _, table = shown[-1]
    assert len(table) == len(methods)
    for row in table:
        insertion, deletion = row[1], row[2]
        assert 0.0 <= insertion <= 1.0 and 0.0 <= deletion <= 1.0
        assert row[6] == 4


def test_sanity_runs_on_a_model_exact_through_intercepts(handlers):
    from tgrad.sanity import randomization_groups

    model = "convnext_tiny"
    steps = list(handlers.sanity(PHOTO, model, None, ["tgrad"], request=Request("s")))
    module = handlers.session.models.get(model).loaded.module
    numbers = steps[-1][2]
    assert numbers["status"] == "done"
    assert len(numbers["steps"]) == len(randomization_groups(module)) + 1
    assert numbers["steps"][0]["similarity"]["tgrad"]["spearman_abs"] == pytest.approx(1.0)


def test_the_guide_explains_intercepts_beside_the_figure():
    from explorer import ui
    from explorer.handlers import BUNDLED_PHOTOS

    # Gradio may serve the photos and the figure, nothing else
    figure = ui.GUIDE_FIGURE
    assert figure.is_file() and figure.name == "tangent_intercepts.png"
    assert ui.LAUNCH_OPTIONS["allowed_paths"] == [*map(str, BUNDLED_PHOTOS), str(figure)]
    before, mark, after = ui.GUIDE.partition(ui.GUIDE_MARK)
    assert mark and "intercept" in after and "piecewise-linear models have only biases" in after
    demo = ui.build_demo(Session(loader=random_torchvision))
    shown = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert shown["guide"].value == before.strip() or before.strip() in shown["guide"].value
    assert shown["guide-intercepts"].value.strip() == after.strip()
    assert shown["guide-figure"].value["path"].endswith(".png")


def test_the_model_note_says_how_the_model_is_exact(handlers):
    from tgrad.models import exactness

    smooth = explain_draw.model_note(handlers.session.models.get("efficientnet_b0").loaded)
    assert smooth.endswith(f"; {exactness('efficientnet_b0')}.")
    assert "tangent intercepts" in smooth
    linear = explain_draw.model_note(random_torchvision("resnet18"))
    assert linear.endswith("; exact: piecewise linear, its terms are biases.")
