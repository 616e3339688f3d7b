"""timm models by name (``timm:<name>``, SPEC 6): offline from the Hugging Face cache, a
clear error when their weights are not there, random weights only when asked for, and the
preprocessing of the model's data config. No network: the cache is a folder made here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tgrad.models import WeightsUnavailableError, load_model, model_preprocessing, weights_status

timm = pytest.importorskip("timm")
ROOT = Path(__file__).resolve().parent.parent


def test_random_weights_are_an_explicit_choice_and_decompose_exactly():
    from tgrad.tgrad import TGrad

    loaded = load_model("timm:resnet18", weights="random", seed=3)
    again = load_model("timm:resnet18", weights="random", seed=3)
    for a, b in zip(
        loaded.module.state_dict().values(), again.module.state_dict().values(), strict=False
    ):
        assert torch.equal(a, b)  # seeded, in a forked RNG
    assert not loaded.module.training and len(loaded.categories) == 1000
    x = loaded.preprocessing.normalize(torch.rand(1, 3, 64, 64, generator=torch.Generator()))
    result = TGrad(loaded.module)(x)
    assert result.gap.abs().item() <= 1e-4 * max(1.0, result.logit.abs().item())


def test_missing_pretrained_weights_say_where_they_belong(monkeypatch, tmp_path):
    monkeypatch.setenv("TGRAD_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=r"timm:resnet18\.a1_in1k.*Hugging Face"):
        load_model("timm:resnet18.a1_in1k")
    available, where = weights_status("timm:resnet18.a1_in1k")
    assert not available and "downloads are off" in where


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="Unknown timm model 'no_such_net'"):
        load_model("timm:no_such_net", weights="random")
    with pytest.raises(ValueError, match="timm:<name>"):
        load_model("timm:")


def test_the_preprocessing_is_the_data_config():
    pre = model_preprocessing("timm:resnet50.a1_in1k")  # input 224, crop_pct 0.95
    assert (pre.crop, pre.resize, pre.interpolation) == (224, 235, "bicubic")
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)


SCRIPT = """
import sys, torch
from tgrad.models import load_model, weights_status
available, where = weights_status("timm:resnet18.a1_in1k")
loaded = load_model("timm:resnet18.a1_in1k")
saved = torch.load(sys.argv[1])
same = all(torch.equal(loaded.module.state_dict()[k], v) for k, v in saved.items())
print(available, same, where.endswith("model.safetensors"))
"""


def test_pretrained_weights_load_offline_from_the_hugging_face_cache(tmp_path):
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        state = timm.create_model("resnet18", pretrained=False).state_dict()
    torch.save(state, tmp_path / "expected.pt")
    # the hub cache's layout: models--<org>--<repo>/snapshots/<revision>/<file>, refs/main
    repo = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "TGRAD_OFFLINE": "1", "PYTHONPATH": str(ROOT)}  # fmt: skip
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "expected.pt")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True", "True"]


@pytest.mark.slow  # three timm models through the CLI
def test_the_cli_takes_timm_models_and_says_how_each_model_is_exact(tmp_path, capsys):
    from tgrad.cli import main

    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "efficientnet_lite0  yes  exact by piecewise linear" in listing
    assert "convnext_tiny" in listing and "exact by tangent intercepts" in listing
    args = ["explain", str(ROOT / "assets" / "coffee.jpg"), "--weights", "random", "--out-dir",
            str(tmp_path)]  # fmt: skip
    assert main([*args, "--model", "timm:mobilenetv3_small_100"]) == 0
    assert "exact through tangent intercepts" in capsys.readouterr().out
    assert main([*args, "--model", "timm:resnet18"]) == 0
    assert "exact: piecewise linear" in capsys.readouterr().out
