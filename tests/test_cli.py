"""The command line: numbers printed, files written, errors in one line."""

import re
from pathlib import Path

import pytest
from PIL import Image

from tgrad.cli import main
from tgrad.models import MODEL_NAMES

ASSETS = Path(__file__).resolve().parent.parent / "assets"


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
    gap = float(re.search(r"completeness gap (\S+)", text).group(1))
    assert abs(gap) < 1e-4 * max(1.0, abs(logit))
    assert Image.open(out).size == (224, 224)
    strip = Image.open(tmp_path / "coffee_layers.png")
    assert strip.size[0] > 1000  # 8 panels per row
    assert Image.open(tmp_path / "coffee_terms.png").size[0] > 600  # a bar per term


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
