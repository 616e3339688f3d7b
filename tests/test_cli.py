"""The command line: numbers printed, files written, errors in one line."""

import re
from pathlib import Path

import pytest
from PIL import Image

from tgrad.cli import build_parser, main
from tgrad.methods import METHODS
from tgrad.models import MODEL_NAMES

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@pytest.mark.slow  # real Lite0 at 224 px
def test_explain_prints_top5_and_a_complete_decomposition(tmp_path, capsys):
    out = tmp_path / "coffee.png"
    assert main(["explain", str(ASSETS / "coffee.jpg"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"1\.\s+967 espresso", text)
    contributions = [
        float(v) for v in re.findall(r"^\S+\s+\S+\s+\S+\s+([+-]\d+\.\d+)\s", text, re.M)
    ]
    logit = float(re.search(r"logit (-?\d+\.\d+)\n", text).group(1))
    assert len(contributions) == 51  # input + 49 layers + the classifier bias
    assert sum(contributions) == pytest.approx(logit, abs=51 * 1e-4)  # 4-decimal rounding
    gap = float(re.search(r"completeness gap (\S+);", text).group(1))
    assert abs(gap) < 1e-4 * max(1.0, abs(logit))
    # the share of a term is of the terms' total absolute size, as on the page (not of the
    # logit): the absolute shares add up to 100 % (51 shares rounded to 0.1 %)
    shares = [float(v) for v in re.findall(r"([+-]\d+\.\d)% of all terms$", text, re.M)]
    assert len(shares) == 51
    assert sum(abs(v) for v in shares) == pytest.approx(100.0, abs=51 * 0.05)
    size = float(re.search(r"total absolute size (\d+\.\d+)", text).group(1))
    assert size == pytest.approx(sum(abs(c) for c in contributions), abs=51 * 1e-4)
    assert Image.open(out).size == (224, 224)
    strip = Image.open(tmp_path / "coffee_layers.png")
    assert strip.size[0] > 1000  # 8 panels per row
    assert Image.open(tmp_path / "coffee_terms.png").size[0] > 600  # a bar per term


@pytest.mark.slow  # real Lite0 at 224 px
def test_target_by_name(tmp_path, capsys):
    code = main(
        [
            "explain",
            str(ASSETS / "coffee.jpg"),
            "--target",
            "coffee mug",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert "explaining class 504 'coffee mug'" in capsys.readouterr().out
    assert (tmp_path / "coffee_tgrad.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet50"], "No pretrained weights for 'resnet50'"),
        (["--target", "dog"], "is part of"),  # ambiguous: the candidates are listed
        (["--target", "1000"], "out of range"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, args, message):
    code = main(["explain", str(ASSETS / "coffee.jpg"), "--out-dir", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_not_an_image(tmp_path, capsys):
    fake = tmp_path / "notes.jpg"
    fake.write_text("not a photo")
    assert main(["explain", str(fake), "--out-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_models_lists_availability(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.match(r"efficientnet_lite0\s+yes", lines[0])
    assert len(lines) == len(MODEL_NAMES)


def test_out_dir_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("")
    code = main(["explain", str(ASSETS / "coffee.jpg"), "--out-dir", str(blocker)])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.slow  # real Lite0 at 224 px
def test_several_images_in_one_call(tmp_path, capsys):
    images = [str(ASSETS / "coffee.jpg"), str(ASSETS / "chelsea.jpg")]
    assert main(["explain", *images, "--out-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert re.search(r"1\.\s+967 espresso", text)
    assert re.search(r"1\.\s+28[1-5] ", text)  # a cat class
    for stem in ("coffee", "chelsea"):
        assert Image.open(tmp_path / f"{stem}_tgrad.png").size == (224, 224)
        assert (tmp_path / f"{stem}_tgrad_layers.png").exists()
    code = main(["explain", *images, "--out", str(tmp_path / "one.png")])
    assert code == 2 and "--out names one file" in capsys.readouterr().err


@pytest.mark.slow  # real Lite0 at 224 px
def test_explain_with_methods_writes_one_figure_and_times(tmp_path, capsys):
    images = [str(ASSETS / "coffee.jpg"), str(ASSETS / "chelsea.jpg")]
    out = tmp_path / "fig1.png"
    code = main(["explain", *images, "--method", "tgrad, gradcam,vanilla", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert re.search(r"coffee\.jpg: class 967 'espresso'", text)
    for name, layer in (("tgrad", "-"), ("gradcam", "_act1"), ("vanilla", "-")):
        assert re.search(rf"^{re.escape(name)}\s+\w+\s+\d+\.\d+\s+{layer}", text, re.M), name
    assert "integrated_gradients" not in text
    width, height = Image.open(out).size
    assert width > 3 * height / 2  # 2 rows, 4 columns: the image and 3 methods
    assert not (tmp_path / "coffee_tgrad.png").exists()  # nothing of the per-image outputs


def test_explain_with_an_unknown_method_is_one_line(tmp_path, capsys):
    code = main(["explain", str(ASSETS / "coffee.jpg"), "--method", "gradcam,magic"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "magic" in err


def test_method_lists_are_written_the_same_way_in_every_command():
    from tgrad.cli import method_names

    for spelling in (
        ["tgrad", "gradcam"],
        ["tgrad,gradcam"],
        ["tgrad, gradcam"],
        ["tgrad,", "gradcam"],
    ):
        assert method_names(spelling) == ("tgrad", "gradcam")
    assert method_names(["all"]) == method_names(["tgrad", "all"]) == tuple(METHODS)
    with pytest.raises(ValueError, match="magic"):
        method_names(["gradcam", "magic"])
    parser = build_parser()
    for argv in (
        ["explain", "a.jpg", "--method", "tgrad", "gradcam,vanilla"],
        ["sanity", "a.jpg", "--methods", "tgrad", "gradcam,vanilla"],
        ["evaluate", "--images", "d", "--methods", "tgrad", "gradcam,vanilla"],
    ):
        args = parser.parse_args(argv)
        listed = args.method if argv[0] == "explain" else args.methods
        assert method_names(listed) == ("tgrad", "gradcam", "vanilla"), argv


@pytest.mark.slow  # real Lite0 at 224 px
def test_explain_methods_separated_by_spaces(tmp_path, capsys):
    out = tmp_path / "two.png"
    code = main(
        ["explain", str(ASSETS / "coffee.jpg"), "--method", "tgrad", "gradcam", "--out", str(out)]
    )
    assert code == 0 and out.exists()
    text = capsys.readouterr().out
    assert re.search(r"^gradcam\s+cam\s", text, re.M) and re.search(r"^tgrad\s+bias\s", text, re.M)


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", str(ASSETS / "coffee.jpg")],
        ["explain", str(ASSETS / "coffee.jpg"), "--method", "gradcam"],
        ["sanity", str(ASSETS / "coffee.jpg")],
        ["evaluate", "--images", str(ASSETS)],
    ],
)
def test_a_device_that_is_not_here_is_one_line(argv, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a CPU machine
    monkeypatch.chdir(tmp_path)
    for device, message in (("cuda", "no CUDA GPU is available here"), ("gpu", "is not a device")):
        assert main([*argv, "--device", device]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # refused before any work


@pytest.mark.slow  # real Lite0 at 224 px
def test_integrated_gradients_reports_its_baseline_and_convergence_delta(
    tmp_path, capsys, one_torch_thread
):
    import torch

    from tgrad.images import load_image
    from tgrad.methods import explain, preprocessing_options
    from tgrad.models import load_model

    photo = str(ASSETS / "coffee.jpg")
    out = str(tmp_path / "ig.png")
    assert main(["explain", photo, "--method", "integrated_gradients", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "integrated_gradients: baseline black, convergence delta" in text
    printed = float(re.search(rf"^  {re.escape(photo)}: ([+-]\d+\.\d+)$", text, re.M).group(1))
    lite0 = load_model("efficientnet_lite0")
    x = lite0.preprocessing(load_image(photo))[None]
    maps = explain(
        lite0.module, x, None, "integrated_gradients", preprocessing_options(lite0.preprocessing)
    )
    delta = maps.convergence_delta["integrated_gradients"]
    assert printed == pytest.approx(float(delta[0]), abs=1e-5)  # printed with 5 decimals
    assert torch.isfinite(delta).all()
