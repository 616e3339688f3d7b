"""The Evaluate tab's callback, called directly: its numbers are the metrics engine's on
the maps the Compare tab shows, cached, with checked inputs."""

from __future__ import annotations

import gradio as gr
import pytest
import torch

import tgrad.metrics
from explorer.handlers import BUNDLED_PHOTOS, Handlers
from explorer.session import Session
from explorer.tabs import evaluate
from tgrad.models import DEFAULT_MODEL

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the server runs


PHOTO = str(BUNDLED_PHOTOS[3])
STEPS = 8  # the conventions do not depend on the step count; 8 keeps the test short


@pytest.fixture(scope="module")
def handlers() -> Handlers:
    return Handlers(Session())


@pytest.fixture(scope="module")
def scored(handlers):
    """Every step of evaluating T-Grad and GradCAM on the rocket at 8 steps."""
    return list(handlers.evaluate(PHOTO, DEFAULT_MODEL, None, ["tgrad", "gradcam"], STEPS))


def test_scores_are_the_metrics_engines(handlers, scored):
    session = handlers.session
    explanation = session.lookup(handlers.compute(PHOTO, DEFAULT_MODEL, None).key)
    model = session.models.get(DEFAULT_MODEL).loaded.module
    target = torch.tensor([explanation.target])
    table = scored[-1][2]
    assert [row[0] for row in table] == ["T-Grad", "GradCAM"]
    maps = {
        "tgrad": explanation.result.saliency,
        "gradcam": session.maps.get(f"{explanation.key}:gradcam").map[None],
    }
    for row, method in zip(table, maps, strict=True):
        curves = tgrad.metrics.insertion_deletion(model, explanation.x, maps[method], target, STEPS)
        drop = tgrad.metrics.average_drop_increase(model, explanation.x, maps[method], target)
        expected = [
            float(curves.insertion_auc[0]),
            float(curves.deletion_auc[0]),
            float(curves.insertion_minus_deletion[0]),
            float(drop.average_drop),
            float(drop.increase),
        ]
        assert row[1:6] == pytest.approx(expected, abs=6e-3), method  # the table rounds
        assert row[6] == STEPS
        kept = session.scores.get(f"{explanation.key}:{method}:{STEPS}")
        torch.testing.assert_close(kept.insertion, curves.insertion[0])
        torch.testing.assert_close(kept.deletion, curves.deletion[0])


def test_the_plots_name_the_class_they_follow(handlers, scored):
    explanation = handlers.session.lookup(handlers.compute(PHOTO, DEFAULT_MODEL, None).key)
    insertion, deletion, _ = scored[-1]
    for figure, which in ((insertion, "Insertion"), (deletion, "Deletion")):
        axes = figure.axes[0]
        assert axes.get_title().startswith(f"{which} for {explanation.target_label} (8 steps)")
        assert axes.get_ylabel() == f"probability of {explanation.categories[explanation.target]}"


def test_scores_stream_and_the_plots_carry_every_curve(scored):
    assert [len(step[2]) for step in scored] == [0, 1, 2]
    assert scored[0][0] is None and scored[0][1] is None  # nothing to plot yet
    insertion, deletion, _ = scored[-1]
    for figure in (insertion, deletion):
        lines = figure.axes[0].get_lines()
        assert len(lines) == 2 and all(len(line.get_xdata()) == STEPS + 1 for line in lines)
        labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
        assert labels[0].startswith("T-Grad (AUC ") and labels[1].startswith("GradCAM (AUC ")


def test_evaluating_again_recomputes_nothing(handlers, scored, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(tgrad.metrics, "insertion_deletion", forbidden)
    steps = list(handlers.evaluate(PHOTO, DEFAULT_MODEL, None, ["gradcam", "tgrad"], STEPS))
    assert len(steps) == 1 and [row[0] for row in steps[0][2]] == ["GradCAM", "T-Grad"]


@pytest.mark.parametrize("steps", ["abc", "9" * 100, float("nan"), [8], True])
def test_bad_step_counts_are_user_errors(handlers, steps):
    with pytest.raises(gr.Error, match="number of steps must be a number from 1 to 224"):
        next(handlers.evaluate(PHOTO, DEFAULT_MODEL, None, ["tgrad"], steps))


def test_table_columns():
    assert len(evaluate.SCORE_COLUMNS) == 8 and evaluate.SCORE_COLUMNS[6] == "steps"
