"""The evaluation job (``python -m tgrad evaluate``, :mod:`tgrad.evaluate`): the sample,
the report, resume after an interruption, and torchrun on CPU giving the same table.

The job's own tests run a tiny network in-process; the command-line tests run the real
EfficientNet-Lite0 (offline weights) on a few 32 px images at 4 steps, one torch thread
everywhere so that every run does the same floating-point operations.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.nets import SmallCNN, perturb
from tgrad import cli
from tgrad.evaluate import (
    TABLE_COLUMNS,
    NothingEvaluatedError,
    evaluate,
    imagenet_wnids,
    list_images,
    read_records,
    sample_images,
)
from tgrad.models import LoadedModel, Preprocessing, imagenet_categories

ROOT = Path(__file__).resolve().parent.parent
TENCH, TOILET_TISSUE = "n01440764", "n15075141"
METHODS = ("tgrad", "gradcam")


def _save(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Six images: two in a WordNet-id folder each, one in a plain folder, one flat; and
    files that are not images, or hidden, or two levels down."""
    root = tmp_path_factory.mktemp("images")
    for i, key in enumerate(
        [
            f"{TENCH}/a.png",
            f"{TENCH}/b.png",
            f"{TOILET_TISSUE}/c.png",
            f"{TOILET_TISSUE}/d.jpg",
            "misc/e.png",
            "f.png",
        ]
    ):
        _save(root / key, i)
    (root / "notes.txt").write_text("not an image")
    _save(root / ".hidden.png", 9)
    _save(root / "misc" / "deeper" / "g.png", 10)
    return root


@pytest.fixture(scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_model() -> LoadedModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = perturb(SmallCNN(classes=1000))
    preprocessing = Preprocessing(32, 32, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return LoadedModel("tiny", module, preprocessing, imagenet_categories(), "random")


def _table(out: Path, drop_time: bool = True) -> list[dict]:
    with open(out / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if drop_time:  # a time: different in every run
        for row in rows:
            del row["ms_per_image"]
    return rows


def _per_image(out: Path) -> list[dict]:
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        del row["ms_map"], row["ms_total"]
    return rows


# --------------------------------------------------------------------------------------
# The WordNet ids and the sample


def test_wnids_are_the_imagenet_classes_in_index_order():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 == len(set(wnids))
    assert list(wnids) == sorted(wnids)
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    # torchvision's Imagenette names ten of them: each lands on the class of that name
    import torchvision.datasets.imagenette as imagenette

    pairs = dict(imagenette.Imagenette._WNID_TO_CLASS)
    categories = imagenet_categories()
    for wnid, names in pairs.items():
        assert categories[wnids.index(wnid)] == names[0]
    assert len(pairs) == 10


def test_sample_is_seeded_sorted_and_takes_targets_from_wnid_folders(folder):
    keys = list_images(folder)
    assert (
        keys
        == sorted(keys)
        == [
            "f.png",
            "misc/e.png",
            f"{TENCH}/a.png",
            f"{TENCH}/b.png",
            f"{TOILET_TISSUE}/c.png",
            f"{TOILET_TISSUE}/d.jpg",
        ]
    )
    five = sample_images(folder, 5, seed=1)
    assert five == sample_images(folder, 5, seed=1)
    assert [s.key for s in sample_images(folder, 3, seed=1)] == [s.key for s in five[:3]]
    assert [s.key for s in sample_images(folder, 5, seed=2)] != [s.key for s in five]
    assert len(sample_images(folder, 2000)) == 6
    targets = {s.key: s.target for s in sample_images(folder, 6)}
    assert targets[f"{TENCH}/a.png"] == 0 and targets[f"{TOILET_TISSUE}/d.jpg"] == 999
    assert targets["misc/e.png"] is None and targets["f.png"] is None


def test_an_empty_folder_and_a_bad_n_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        sample_images(tmp_path, 3)
    with pytest.raises(ValueError, match="--n"):
        sample_images(tmp_path, 0)
    with pytest.raises(ValueError, match="folder"):
        sample_images(tmp_path / "missing", 3)


# --------------------------------------------------------------------------------------
# The job, in-process, on a tiny network


def test_job_writes_the_table_and_charts_and_resumes_to_the_same_numbers(
    folder, tmp_path, monkeypatch, one_thread
):
    model = _tiny_model()
    whole = evaluate(
        folder, model, METHODS, n=5, batch_size=8, out=tmp_path / "whole", steps=8, progress=False
    )
    names = {p.name for p in whole.files}
    assert names == {
        "table.csv",
        "table.md",
        "per_image.csv",
        "time_per_method.png",
        "insertion_deletion.png",
    }
    for png in ("time_per_method.png", "insertion_deletion.png"):
        assert (tmp_path / "whole" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "whole" / "table.csv", newline="") as f:
        assert tuple(next(csv.reader(f))) == TABLE_COLUMNS
    rows = _table(tmp_path / "whole", drop_time=False)
    assert [r["method"] for r in rows] == list(METHODS)
    for row in rows:
        assert row["n"] == "5"
        assert 0 <= float(row["insertion"]) <= 1 and 0 <= float(row["deletion"]) <= 1
        assert float(row["insertion_minus_deletion"]) == pytest.approx(
            float(row["insertion"]) - float(row["deletion"]), abs=1e-12
        )
        assert 0 <= float(row["average_drop"]) <= 100
        assert float(row["increase_in_confidence"]) in {0.0, 20.0, 40.0, 60.0, 80.0, 100.0}
        assert float(row["ms_per_image"]) > 0
    markdown = (tmp_path / "whole" / "table.md").read_text()
    assert "| " + " | ".join(TABLE_COLUMNS) + " |" in markdown
    records = read_records(tmp_path / "whole")
    assert len(records) == 10
    for (key, _), record in records.items():
        wnid = key.split("/")[0]
        if wnid in (TENCH, TOILET_TISSUE):
            assert record["target_from"] == "wnid"
            assert record["target"] == imagenet_wnids().index(wnid)
        else:
            assert record["target_from"] == "top1"

    # Stopped after three units (the test hook), a torn line left behind, then rerun.
    out = tmp_path / "stopped"
    monkeypatch.setenv("TGRAD_EVALUATE_STOP_AFTER", "3")
    with pytest.raises(SystemExit):
        evaluate(folder, model, METHODS, n=5, batch_size=8, out=out, steps=8, progress=False)
    assert len(read_records(out)) == 3
    with open(out / "results.jsonl", "a") as f:
        f.write('{"image": "f.png", "method": "tgr')  # a write cut short by a kill
    monkeypatch.delenv("TGRAD_EVALUATE_STOP_AFTER")
    lines = []
    resumed = evaluate(
        folder,
        model,
        METHODS,
        n=5,
        batch_size=8,
        out=out,
        steps=8,
        progress=False,
        log=lines.append,
    )
    assert "line 4 is not a complete JSON record; skipped" in lines[0]
    assert "3 unit(s) done, 7 to do" in lines[1]
    assert len((out / "results.jsonl").read_text().splitlines()) == 10  # torn line cut off
    assert _table(out) == _table(tmp_path / "whole")
    assert _per_image(out) == _per_image(tmp_path / "whole")
    assert [r["method"] for r in resumed.rows] == list(METHODS)

    # Nothing left to do: only the report is rewritten. Other settings are refused.
    lines.clear()
    evaluate(
        folder,
        model,
        METHODS,
        n=5,
        batch_size=3,
        out=out,
        steps=8,
        progress=False,
        log=lines.append,
    )
    assert "10 unit(s) done, 0 to do" in lines[0]
    assert _table(out) == _table(tmp_path / "whole")
    with pytest.raises(ValueError, match=r"another run.*steps"):
        evaluate(folder, model, METHODS, n=5, out=out, steps=6, progress=False)
    assert json.loads((out / "run.json").read_text())["steps"] == 8


def test_unreadable_images_are_left_out_and_not_retried(tmp_path, one_thread):
    images = tmp_path / "images"
    _save(images / "good.png", 0)
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    report = evaluate(
        images,
        _tiny_model(),
        ["vanilla"],
        n=5,
        out=out,
        steps=4,
        progress=False,
        log=lambda line: None,
    )
    assert report.failed == ["broken.png"]
    assert report.rows[0]["n"] == 1
    assert "error" in read_records(out)[("broken.png", "vanilla")]


# --------------------------------------------------------------------------------------
# The records read back: validated, undecodable lines skipped, conflicts refused

GOOD = {
    "image": "a.png",
    "method": "vanilla",
    "target": 3,
    "target_from": "top1",
    "insertion": 0.5,
    "deletion": 0.25,
    "average_drop": 12.5,
    "increase_in_confidence": 0.0,
    "original": 0.75,
    "masked": 0.5,
    "ms_map": 3.0,
    "ms_total": 9.0,
}


def _write_lines(out: Path, *lines: bytes | str | dict, name: str = "results.jsonl") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    with open(path, "ab") as f:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            f.write((line.encode() if isinstance(line, str) else line) + b"\n")
    return path


def test_undecodable_lines_are_skipped_with_a_warning_naming_file_and_line(tmp_path):
    other = {**GOOD, "image": "b.png"}
    _write_lines(tmp_path, GOOD, b'{"image": "\xff\xfe.png"}', "{not json", other, '{"image": ')
    warnings = []
    records = read_records(tmp_path, warn=warnings.append)
    assert set(records) == {("a.png", "vanilla"), ("b.png", "vanilla")}
    assert len(warnings) == 3
    assert "results.jsonl: line 2 is not UTF-8" in warnings[0]
    assert "results.jsonl: line 3 is not a complete JSON record" in warnings[1]
    assert "results.jsonl: line 5 is not a complete JSON record" in warnings[2]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"insertion": float("nan")}, r"'insertion' must be a finite number in \[0, 1\], got nan"),
        ({"deletion": "0.3"}, "'deletion' must be a number"),
        (
            {"average_drop": 140.0},
            r"'average_drop' must be a finite number in \[0, 100\], got 140.0",
        ),
        ({"masked": True}, "'masked' must be a number"),
        ({"ms_map": float("inf")}, "'ms_map' must be a finite number"),
        ({"target": 2.5}, "'target' must be a class index"),
        ({"target": -1}, "'target' must be a class index"),
        ({"target_from": "guess"}, "'target_from' must be"),
        ({"image": ""}, "'image' must be a non-empty string"),
        ({"method": 7}, "'method' must be a non-empty string"),
        ({"error": 404}, "'error' must be a string"),
    ],
)
def test_a_record_that_is_not_valid_stops_the_job_naming_file_and_line(tmp_path, change, message):
    bad = {**GOOD, "image": "b.png", **change}
    _write_lines(tmp_path, GOOD, bad)
    with pytest.raises(ValueError, match=rf"results\.jsonl: line 2: {message}"):
        read_records(tmp_path)
    (tmp_path / "results.jsonl").unlink()
    _write_lines(tmp_path, "[1, 2]")
    with pytest.raises(ValueError, match="line 1: a record is a JSON object, got list"):
        read_records(tmp_path)


def test_a_conflicting_duplicate_is_an_error_an_identical_one_is_harmless(tmp_path):
    again = {**GOOD, "ms_map": 4.0, "ms_total": 11.0}  # the same results, other times
    _write_lines(tmp_path, GOOD, GOOD)
    _write_lines(tmp_path, again, name="results.rank1.jsonl")
    assert read_records(tmp_path) == {("a.png", "vanilla"): GOOD}  # the first is kept
    _write_lines(tmp_path, {**GOOD, "insertion": 0.75})
    with pytest.raises(
        ValueError,
        match=r"results\.jsonl: line 3 gives other results .* than results\.jsonl line 1",
    ):
        read_records(tmp_path)


def test_a_corrupted_results_file_is_refused_by_the_job(folder, tmp_path, one_thread):
    model = _tiny_model()
    out = tmp_path / "out"
    evaluate(folder, model, ["vanilla"], n=2, out=out, steps=4, progress=False, log=print)
    lines = (out / "results.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    (out / "results.jsonl").write_text(
        "\n".join([*lines, json.dumps({**record, "deletion": 0.0})]) + "\n"
    )
    with pytest.raises(
        ValueError, match=r"line 3 gives other results .* than results\.jsonl line 2"
    ):
        evaluate(folder, model, ["vanilla"], n=2, out=out, steps=4, progress=False, log=print)
    assert (
        cli.main(
            [
                "evaluate",
                "--images",
                str(folder),
                "--methods",
                "vanilla",
                "-n",
                "2",
                "--out",
                str(out),
            ]
        )
        == 2
    )


def test_nothing_evaluated_is_an_error_not_a_table_of_nans(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"not a png")
    (images / "b.jpg").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(NothingEvaluatedError, match="none of the 2 image"):
        evaluate(images, _tiny_model(), ["vanilla"], out=out, steps=4, progress=False, log=print)
    assert not (out / "table.csv").exists()
    args = ["evaluate", "--images", str(images), "--methods", "vanilla", "--steps", "4"]
    assert cli.main([*args, "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert "error: nothing was evaluated" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------
# The command line with the real model: killed and rerun; torchrun with two processes

# The sample size is given as -n: torchrun's own parser takes --n for an abbreviation of
# its options (--nnodes, --nproc-per-node, ...) and stops.
CLI_ARGS = ["--methods", "tgrad,gradcam", "-n", "3", "--steps", "4", "--batch-size", "16"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TGRAD_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory, one_thread) -> Path:
    """An uninterrupted single-process run of the command line (in-process)."""
    out = tmp_path_factory.mktemp("reference")
    args = ["evaluate", "--images", str(folder), *CLI_ARGS, "--out", str(out)]
    assert cli.main([a if a != "-n" else "--n" for a in args]) == 0
    return out


@pytest.mark.slow  # a killed and rerun subprocess, real Lite0
def test_cli_run_stopped_half_way_and_rerun_ends_with_the_same_table(
    folder, reference, tmp_path, one_thread, capsys
):
    """The job's test hook stops the command after exactly 2 new units (exit code 3); a
    write torn by a kill is added by hand. The rerun does the other 4 and ends with the
    uninterrupted run's numbers."""
    out = tmp_path / "stopped"
    command = [
        sys.executable,
        "-m",
        "tgrad",
        "evaluate",
        "--images",
        str(folder),
        *CLI_ARGS,
        "--out",
        str(out),
    ]
    env = dict(_env(), TGRAD_EVALUATE_STOP_AFTER="2")
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540)
    assert run.returncode == 3, run.stderr[-3000:]
    assert len(read_records(out)) == 2
    with open(out / "results.jsonl", "a") as f:
        f.write('{"image": "f.png", "method": "gradc')  # a write cut short by a kill
    assert cli.main(["evaluate", "--images", str(folder), *CLI_ARGS, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "images/s" in captured.out
    assert "2 unit(s) done, 4 to do" in captured.err
    assert re.search(r"results\.jsonl: line 3 is not a complete JSON record; skipped", captured.err)
    assert len(read_records(out)) == 6
    assert len((out / "results.jsonl").read_text().splitlines()) == 6  # torn line cut off
    assert _table(out) == _table(reference)
    assert _per_image(out) == _per_image(reference)


@pytest.mark.slow  # torchrun
def test_torchrun_two_processes_write_the_table_of_one(folder, reference, tmp_path):
    out = tmp_path / "torchrun"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "tgrad",
        "evaluate",
        "--images",
        str(folder),
        *CLI_ARGS,
        "--out",
        str(out),
    ]
    run = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [len((out / f"results.rank{r}.jsonl").read_text().splitlines()) for r in (0, 1)]
    assert ranks == [4, 2]  # images 1 and 3 on rank 0, image 2 on rank 1; two methods
    assert not (out / "results.jsonl").exists()
    assert _table(out) == _table(reference)
    assert _per_image(out) == _per_image(reference)
    assert run.stdout.count("images/s") == 2  # rank 0 reports, once per method
