"""The controls ``random`` and ``edge`` (tgrad.methods.controls): in the registry, the same
for a seed, blind to the model, without hooks or a backward pass, constant through the
sanity check, and listed last (and marked) in the batch job's table.

Oracles: scikit-image's ``filters.sobel`` for the edge map, a unit step worked out by
hand, and the uniform distribution's mean and range for the random map.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from skimage.filters import sobel
from torch import nn

from tests.nets import small_cnn
from tests.test_evaluate_job import _tiny_model
from tests.test_tgrad import hooks_left
from tgrad.methods import METHODS, explain
from tgrad.methods.controls import (
    CONTROL,
    EdgeMap,
    RandomMap,
    controls_last,
    is_control,
    sobel_magnitude,
)
from tgrad.sanity import MEASURES, cascade

CONTROLS = ("random", "edge")


def batch(seed: int = 0, n: int = 2, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_registry_has_both_controls_last_in_their_own_family():
    assert [n for n, m in METHODS.items() if m.family == CONTROL] == list(CONTROLS)
    assert list(METHODS)[-2:] == list(CONTROLS)  # "all" lists them last
    assert METHODS["random"].build is RandomMap and METHODS["edge"].build is EdgeMap
    assert dict(METHODS["random"].options) == {"seed": 0}
    assert dict(METHODS["edge"].options) == {}
    for name in CONTROLS:  # nothing of their own to run: they come with the shared pass
        assert METHODS[name].single_pass and "control" in METHODS[name].description
    assert controls_last(["edge", "tgrad", "random", "gradcam"]) == (
        "tgrad",
        "gradcam",
        "edge",
        "random",
    )
    assert [n for n in METHODS if not is_control(n)] == list(METHODS)[:-2]


def test_random_is_uniform_and_the_same_for_a_seed_whatever_the_model_or_image():
    x = batch(0, n=2, size=224)
    first = explain(small_cnn(0), x, methods="random")["random"]
    assert first.shape == (2, 224, 224) and first.dtype == x.dtype
    assert torch.equal(first[0], first[1])  # one map for every image of a batch
    other_model_and_image = explain(small_cnn(1), batch(5, n=1, size=224), methods="random")
    assert torch.equal(other_model_and_image["random"][0], first[0])
    reseeded = explain(small_cnn(0), x, methods="random", options={"random": {"seed": 1}})
    assert not torch.equal(reseeded["random"], first)
    values = first[0]
    assert float(values.min()) >= 0.0 and float(values.max()) < 1.0
    # 50,176 uniform values: the mean's standard deviation is sqrt(1/12 / 50176) = 0.0013,
    # so 0.01 is more than 7 of them; a quarter of the values below 0.25 likewise.
    assert abs(float(values.mean()) - 0.5) < 0.01
    assert abs(float((values < 0.25).double().mean()) - 0.25) < 0.01


def test_edge_equals_scikit_image_sobel_summed_over_channels():
    x = batch(1, n=2, size=24)
    got = explain(small_cnn(), x, methods="edge")["edge"]
    expected = np.stack([sum(sobel(channel) for channel in image) for image in x.double().numpy()])
    torch.testing.assert_close(got.double(), torch.from_numpy(expected), rtol=1e-5, atol=1e-6)


def test_edge_of_a_unit_step_by_hand():
    step = torch.zeros(1, 1, 6, 8)
    step[..., 4:] = 1.0  # columns 0-3 at 0, columns 4-7 at 1
    expected = torch.zeros(1, 6, 8)
    # central difference 1 - 0 on the two columns beside the step, smoothing weights sum
    # to 1, no vertical change: sqrt((1^2 + 0^2) / 2)
    expected[..., 3:5] = 0.5**0.5
    torch.testing.assert_close(sobel_magnitude(step), expected)
    assert torch.equal(sobel_magnitude(torch.full((2, 3, 5, 5), 7.0)), torch.zeros(2, 5, 5))


def test_edge_is_blind_to_the_model():
    x = batch(2)
    maps = [explain(small_cnn(seed), x, methods="edge")["edge"] for seed in (0, 1)]
    assert torch.equal(maps[0], maps[1])
    assert torch.equal(maps[0], sobel_magnitude(x))


class BackwardRaises(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("the controls must not run a backward pass")


class NoBackward(nn.Module):
    """small_cnn with a layer whose backward raises."""

    def __init__(self) -> None:
        super().__init__()
        self.net = small_cnn()

    def forward(self, x):
        return self.net(BackwardRaises.apply(x))


def test_controls_run_no_backward_pass():
    model, x = NoBackward().eval(), batch(3)
    with pytest.raises(RuntimeError, match="must not run a backward"):
        explain(model, x, methods="vanilla")  # the trap works
    maps = explain(model, x, target=[1, 2], methods=CONTROLS)
    assert torch.equal(maps["edge"], sobel_magnitude(x))
    assert maps.target.tolist() == [1, 2]


def test_controls_register_no_hook(monkeypatch):
    registered: list[str] = []

    def counting(name, original):
        def register(self, *args, **kwargs):
            registered.append(name)
            return original(self, *args, **kwargs)

        return register

    for cls, name in (
        (nn.Module, "register_forward_hook"),
        (nn.Module, "register_forward_pre_hook"),
        (nn.Module, "register_full_backward_hook"),
        (nn.Module, "register_backward_hook"),
        (torch.Tensor, "register_hook"),
    ):
        monkeypatch.setattr(cls, name, counting(name, getattr(cls, name)))
    model, x = small_cnn(), batch(4)
    explain(model, x, methods="tgrad")
    assert registered  # the count sees the hooks of a method that has them
    registered.clear()
    explain(model, x, methods=CONTROLS)
    assert registered == []
    assert hooks_left(model) == 0


def test_controls_stay_constant_through_the_sanity_check():
    model, x = small_cnn(), batch(5)
    steps = list(cascade(model, x, methods=("vanilla", *CONTROLS)))
    assert len(steps) == 4  # original, fc, conv2, conv1
    for step in steps[1:]:
        for name in CONTROLS:
            assert torch.equal(step.maps[name], steps[0].maps[name])
            for measure in MEASURES:
                assert step.similarity[name][measure].tolist() == pytest.approx([1.0, 1.0])
        assert not torch.equal(step.maps["vanilla"], steps[0].maps["vanilla"])


def test_the_evaluation_table_lists_the_controls_last_and_marks_them(tmp_path):
    from tgrad.evaluate import TABLE_COLUMNS, evaluate

    for seed in range(3):
        photo(tmp_path / "images" / f"{seed}.png", seed)
    report = evaluate(
        tmp_path / "images",
        _tiny_model(),
        ["edge", "tgrad", "random", "gradcam"],
        n=3,
        batch_size=8,
        out=tmp_path / "out",
        steps=4,
        progress=False,
    )
    assert [r["method"] for r in report.rows] == ["tgrad", "gradcam", "edge", "random"]
    assert [r["control"] for r in report.rows] == [False, False, True, True]
    with open(tmp_path / "out" / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == TABLE_COLUMNS and TABLE_COLUMNS[-1] == "control"
    assert [(r["method"], r["control"]) for r in rows] == [
        ("tgrad", "False"),
        ("gradcam", "False"),
        ("edge", "True"),
        ("random", "True"),
    ]
    for row in rows:
        assert row["n"] == "3" and 0 <= float(row["insertion"]) <= 1
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "| random | 3 |" in markdown and markdown.rstrip().endswith("| True |")


def test_the_cli_draws_the_controls(tmp_path, monkeypatch, capsys):
    from tgrad import cli

    tiny = _tiny_model()
    monkeypatch.setattr(cli, "load_model", lambda *args, **kwargs: tiny)
    path = photo(tmp_path / "photo.png")
    out = tmp_path / "methods.png"
    assert cli.main(["explain", str(path), "--method", "tgrad,random,edge", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "random" in text and "control" in text and out.exists()


def photo(path, seed: int = 0):
    """A random 40 px RGB photo saved at ``path``."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path
