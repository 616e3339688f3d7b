"""The batch evaluation job: the paper's Table 1 and Figs. 3-4 over a folder of images.

    python -m tgrad evaluate --images DIR --model NAME --methods all --n 2000 \\
        --batch-size 32 --device cuda --out RESULTS_DIR
    torchrun --nproc_per_node=K -m tgrad evaluate ...        # the same, split over K processes

What it does (:func:`evaluate`):

* **The sample.** Images are the files with an image suffix directly in the folder or one
  level down (ImageNet-style class folders), keyed by their path relative to the folder
  (POSIX separators) and listed in sorted key order. The sample is the first ``n`` of a
  permutation of that list drawn with ``seed`` (torch's CPU generator), so the same folder
  and seed always give the same images, and a larger ``n`` extends a smaller one.
* **The class explained.** An image in a class folder named by an ImageNet WordNet id
  (``n01440764``) is explained and scored for that class (:func:`imagenet_wnids` gives the
  index); any other image for the model's top-1 class. The same class is used by the map
  and by both metrics.
* **One unit of work** = one image and one method: the map (``tgrad.methods.explain`` with
  that method alone, timed per image, device work included), then insertion / deletion
  (SPEC 4, ``steps`` steps, the blur substrate, probabilities) and Average Drop / Increase
  in Confidence. Each image goes through alone (batch of 1; ``batch_size`` is the number of
  perturbed images per forward pass), so a unit's numbers do not depend on which other
  images share a process or a run.
* **Resume.** Each finished unit is appended to a JSON-lines file as one record, flushed
  and fsynced. On start every ``results*.jsonl`` in the output folder is read and the
  units it holds are skipped, so a run stopped at any point and started again ends with
  the numbers of an uninterrupted run. Records are checked as they are read
  (:func:`read_records`): a line that does not decode (a torn last line from a kill, a
  line that is not UTF-8 or not JSON) is skipped with a warning naming file and line (a
  torn last line is also cut off); a record with a wrong type, a number out of range or
  not finite, or a second record of a unit with other results, stops the job with an
  error naming file and line. ``run.json`` holds the settings that change numbers
  (folder, model, weights, steps, seed); a rerun with other settings into the same
  folder is refused. A job in which no image could be read writes no report and raises
  :class:`NothingEvaluatedError`.
* **Many processes.** Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the job
  joins a ``torch.distributed`` group (NCCL on GPUs, gloo on CPU), agrees with the other
  ranks on the units already done, takes every ``world``-th image still to do, writes its
  records to ``results.rank{r}.jsonl`` and sends them to rank 0 at the end with
  ``gather_object``. Rank 0 writes the report. The output folder may be shared or local to
  each machine; resume works in both cases.
* **The report** (rank 0): ``table.csv`` / ``table.md`` (:data:`TABLE_COLUMNS`: means over
  the images; AUCs in [0, 1], Average Drop and Increase in Confidence in percent, the
  map's time in ms per image; the controls of :mod:`tgrad.methods.controls` last, ``True``
  in the ``control`` column), ``per_image.csv``, and the charts ``time_per_method.png``
  (Fig. 3) and ``insertion_deletion.png`` (Fig. 4). Means are sums in float64 with
  :func:`math.fsum` over the records sorted by image, so one process and K processes,
  interrupted or not, give the same table, bit for bit, in every column but
  ``ms_per_image`` (a time, different in every run).
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from tgrad.images import ImageLoadError, load_image
from tgrad.methods import explain, preprocessing_options, resolve_methods
from tgrad.methods.controls import controls_last, is_control
from tgrad.metrics import average_drop_increase, insertion_deletion
from tgrad.models import DEFAULT_MODEL, LoadedModel, load_model

__all__ = [
    "IMAGE_SUFFIXES",
    "TABLE_COLUMNS",
    "NothingEvaluatedError",
    "RecordError",
    "Report",
    "Sample",
    "check_record",
    "evaluate",
    "imagenet_wnids",
    "list_images",
    "read_records",
    "sample_images",
    "summarize",
]

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
TABLE_COLUMNS: tuple[str, ...] = (
    "method",
    "n",
    "insertion",
    "deletion",
    "insertion_minus_deletion",
    "average_drop",
    "increase_in_confidence",
    "ms_per_image",
    "control",
)
PER_IMAGE_COLUMNS: tuple[str, ...] = (
    "image",
    "method",
    "target",
    "target_from",
    "insertion",
    "deletion",
    "average_drop",
    "increase_in_confidence",
    "ms_map",
    "ms_total",
)
_WNIDS_FILE = Path(__file__).parent / "data" / "imagenet_wnids.txt"
_SETTINGS_FILE = "run.json"
_STOP_AFTER = "TGRAD_EVALUATE_STOP_AFTER"  # test hook: exit(3) after this many new units


# --------------------------------------------------------------------------------------
# The sample


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in class-index order (``tgrad/data``; see there)."""
    lines = _WNIDS_FILE.read_text().splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


@functools.cache
def _wnid_index() -> dict[str, int]:
    return {wnid: index for index, wnid in enumerate(imagenet_wnids())}


@dataclass(frozen=True)
class Sample:
    """One image of the sample."""

    key: str
    """Its path relative to the folder, with ``/``: the key of its records."""
    path: Path
    target: int | None
    """The class of its WordNet-id folder; ``None``: the model's top-1."""


def list_images(folder: str | Path) -> list[str]:
    """Keys (relative POSIX paths) of the images in ``folder`` and its direct subfolders,
    sorted; hidden files and folders are left out."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--images must be a folder, got {str(folder)!r}")
    keys = []
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        files = sorted(entry.iterdir()) if entry.is_dir() else [entry]
        for path in files:
            if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.is_file():
                keys.append(path.relative_to(root).as_posix())
    return sorted(keys)


def sample_images(folder: str | Path, n: int, seed: int = 0) -> list[Sample]:
    """The first ``n`` images of a seeded permutation of :func:`list_images` (all of them
    when there are fewer), each with its WordNet-id target where its folder has one."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--n must be an integer >= 1, got {n!r}")
    keys = list_images(folder)
    if not keys:
        raise ValueError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {str(folder)!r} or its "
            "direct subfolders"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(keys), generator=generator)[:n].tolist()
    wnids = _wnid_index()
    samples = []
    for index in order:
        key = keys[index]
        parent = key.rpartition("/")[0]
        samples.append(Sample(key, Path(folder) / key, wnids.get(parent)))
    return samples


# --------------------------------------------------------------------------------------
# Records


def _results_file(out: Path, rank: int, world: int) -> Path:
    return out / ("results.jsonl" if world == 1 else f"results.rank{rank}.jsonl")


_UNIT_RANGES: dict[str, tuple[float, float]] = {
    "insertion": (0.0, 1.0),
    "deletion": (0.0, 1.0),
    "average_drop": (0.0, 100.0),
    "increase_in_confidence": (0.0, 100.0),
    "original": (0.0, 1.0),
    "masked": (0.0, 1.0),
    "ms_map": (0.0, math.inf),
    "ms_total": (0.0, math.inf),
}
"""The numbers of a unit's record and their ranges (AUCs and probabilities in [0, 1],
percentages in [0, 100], times in ms)."""
_TIMES = ("ms_map", "ms_total")  # differ between runs; every other field is a result


class RecordError(ValueError):
    """A results file holds a record that cannot be trusted (named by file and line)."""


def check_record(record: object) -> str | None:
    """What is wrong with one record of a results file, or None when it is valid.

    A record is a JSON object with a non-empty ``image`` and ``method`` (strings), and
    either an ``error`` (a string: the image could not be read) or a unit's numbers: an
    integer ``target`` >= 0, ``target_from`` ``"top1"`` or ``"wnid"``, and each number of
    :data:`_UNIT_RANGES` finite and in its range.
    """
    if not isinstance(record, dict):
        return f"a record is a JSON object, got {type(record).__name__}"
    for key in ("image", "method"):
        if not isinstance(record.get(key), str) or not record[key]:
            return f"{key!r} must be a non-empty string"
    if "error" in record:
        return None if isinstance(record["error"], str) else "'error' must be a string"
    target = record.get("target")
    if isinstance(target, bool) or not isinstance(target, int) or target < 0:
        return f"'target' must be a class index (an integer >= 0), got {_excerpt(target)}"
    if record.get("target_from") not in ("top1", "wnid"):
        return f"'target_from' must be 'top1' or 'wnid', got {_excerpt(record.get('target_from'))}"
    for key, (low, high) in _UNIT_RANGES.items():
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{key!r} must be a number, got {_excerpt(value)}"
        if not math.isfinite(value) or not low <= value <= high:
            return f"{key!r} must be a finite number in [{low:g}, {high:g}], got {value!r}"
    return None


def _excerpt(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _same_result(a: dict, b: dict) -> bool:
    """Two records of one unit that agree on everything but the times."""
    return {k: v for k, v in a.items() if k not in _TIMES} == {
        k: v for k, v in b.items() if k not in _TIMES
    }


def read_records(
    out: str | Path, warn: Callable[[str], None] | None = None
) -> dict[tuple[str, str], dict]:
    """Every record in ``out/results*.jsonl``, keyed by (image, method); files in sorted
    order.

    A line that is not UTF-8 or not complete JSON (a write torn by a kill) is skipped with
    a warning naming the file and line (``warn``, default: stderr), and its unit is done
    again. A record that parses but is not valid (:func:`check_record`), or a second
    record of a unit with other results than the first, is a :class:`RecordError` naming
    both lines: it cannot be told which to trust. A second record with the same results
    (a copied file; only the times may differ) is harmless, and the first is kept.
    """
    say = warn or (lambda line: print(line, file=sys.stderr))
    records: dict[tuple[str, str], dict] = {}
    where: dict[tuple[str, str], str] = {}
    for path in sorted(Path(out).glob("results*.jsonl")):
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                here = f"{path.name} line {number}"
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    say(f"warning: {path}: line {number} is not UTF-8 text; skipped")
                    continue
                except ValueError:
                    say(f"warning: {path}: line {number} is not a complete JSON record; skipped")
                    continue
                problem = check_record(record)
                if problem is not None:
                    raise RecordError(
                        f"{path}: line {number}: {problem}; delete that line (its unit is "
                        "then done again) or choose another --out"
                    )
                key = (record["image"], record["method"])
                if key not in records:
                    records[key], where[key] = record, here
                elif not _same_result(records[key], record):
                    raise RecordError(
                        f"{path}: line {number} gives other results for image "
                        f"{_excerpt(key[0])} and method {_excerpt(key[1])} than {where[key]}; "
                        "delete the one not to trust (or both: the unit is then done again)"
                    )
    return records


def _open_for_append(path: Path):
    """Open a results file for appending, first cutting off a torn last line."""
    if path.exists():
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            with open(path, "r+b") as f:
                f.truncate(end)
    return open(path, "a", encoding="utf-8")


def _append(f, record: dict) -> None:
    f.write(json.dumps(record, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _check_settings(out: Path, settings: dict, write: bool) -> None:
    path = out / _SETTINGS_FILE
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except ValueError:
            before = None
        if before is not None and before != settings:
            changed = sorted(
                k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k)
            )
            raise ValueError(
                f"{out} holds results of another run (different {', '.join(changed)}); "
                "choose another --out or delete it"
            )
    if write:
        path.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------
# One unit of work


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _evaluate_unit(
    loaded: LoadedModel,
    x: torch.Tensor,
    target: torch.Tensor | None,
    method: str,
    steps: int,
    batch_size: int,
) -> tuple[dict, torch.Tensor]:
    """One image and one method: the map (timed), insertion/deletion, drop/increase.
    Returns the record's numbers and the class explained [1]."""
    options = {**preprocessing_options(loaded.preprocessing), "tgrad": {"strict": True}}
    _synchronize(x.device)
    start = time.perf_counter()
    maps = explain(loaded.module, x, target, (method,), options)
    _synchronize(x.device)
    map_seconds = time.perf_counter() - start
    saliency, explained = maps[method], maps.target
    curves = insertion_deletion(
        loaded.module, x, saliency, explained, n_steps=steps, batch_size=batch_size
    )
    drop = average_drop_increase(loaded.module, x, saliency, explained, batch_size=batch_size)
    _synchronize(x.device)
    total_seconds = time.perf_counter() - start
    numbers = {
        "insertion": float(curves.insertion_auc[0]),
        "deletion": float(curves.deletion_auc[0]),
        "average_drop": float(drop.average_drop),
        "increase_in_confidence": float(drop.increase),
        "original": float(drop.original[0]),
        "masked": float(drop.masked[0]),
        "ms_map": 1000.0 * map_seconds,
        "ms_total": 1000.0 * total_seconds,
    }
    return numbers, explained


# --------------------------------------------------------------------------------------
# The report


class NothingEvaluatedError(ValueError):
    """No unit of the sample has a result (every image failed to load): no report."""


@dataclass(frozen=True)
class Report:
    """What :func:`evaluate` wrote (rank 0 only)."""

    rows: list[dict]
    """One row per method, with the keys of :data:`TABLE_COLUMNS`."""
    out: Path
    files: list[Path]
    images: int
    """The size of the sample."""
    failed: list[str]
    """Images that could not be read (left out of the means)."""
    ms_per_unit: dict[str, float]
    """Per method: the mean time of one image's whole unit (map + both metrics), in ms;
    1000 / it is the job's images per second for that method."""


def summarize(
    records: dict[tuple[str, str], dict], keys: Iterable[str], methods: Sequence[str]
) -> list[dict]:
    """The table: per method, means over the sample's images that have a record.

    Sums are :func:`math.fsum` over the records sorted by image key, in float64, so the
    result does not depend on the order in which records were made or read.
    """
    keys = sorted(keys)
    rows = []
    for method in methods:
        done = [records[(k, method)] for k in keys if (k, method) in records]
        done = [r for r in done if "error" not in r]
        count = len(done)

        def mean(values: Iterable[float], count: int = count) -> float:
            return math.fsum(values) / count if count else math.nan

        rows.append(
            {
                "method": method,
                "n": count,
                "insertion": mean(r["insertion"] for r in done),
                "deletion": mean(r["deletion"] for r in done),
                "insertion_minus_deletion": mean(r["insertion"] - r["deletion"] for r in done),
                "average_drop": mean(r["average_drop"] for r in done),
                "increase_in_confidence": mean(r["increase_in_confidence"] for r in done),
                "ms_per_image": mean(r["ms_map"] for r in done),
                "control": is_control(method),
            }
        )
    return rows


def _write_report(
    out: Path,
    rows: list[dict],
    records: dict[tuple[str, str], dict],
    keys: Sequence[str],
    methods: Sequence[str],
    title: str,
) -> list[Path]:
    from tgrad import viz  # matplotlib only once there is something to draw

    table_csv, table_md = out / "table.csv", out / "table.md"
    with open(table_csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(TABLE_COLUMNS)
        for row in rows:  # repr: the shortest text that reads back as the same float
            writer.writerow([row["method"], row["n"], *(repr(row[c]) for c in TABLE_COLUMNS[2:])])
    formats = {
        "insertion": ".4f",
        "deletion": ".4f",
        "insertion_minus_deletion": ".4f",
        "average_drop": ".2f",
        "increase_in_confidence": ".2f",
        "ms_per_image": ".1f",
        "control": "",
    }
    lines = [
        f"{title}",
        "",
        "AUCs in [0, 1] (insertion: higher is better, deletion: lower); Average Drop and "
        "Increase in Confidence in %; ms_per_image: the map alone; control: a reference "
        "that knows nothing of the model (random, edge), the floor to beat.",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|---|" + "---:|" * (len(TABLE_COLUMNS) - 1),
    ]
    for row in rows:
        cells = [row["method"], str(row["n"])]
        cells += [format(row[c], formats[c]) for c in TABLE_COLUMNS[2:]]
        lines.append("| " + " | ".join(cells) + " |")
    table_md.write_text("\n".join(lines) + "\n", encoding="utf-8")

    per_image = out / "per_image.csv"
    with open(per_image, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(PER_IMAGE_COLUMNS)
        for key in sorted(keys):
            for method in methods:
                record = records.get((key, method))
                if record is None or "error" in record:
                    continue
                writer.writerow([record.get(c, "") for c in PER_IMAGE_COLUMNS])

    names = [row["method"] for row in rows]
    time_png, auc_png = out / "time_per_method.png", out / "insertion_deletion.png"
    viz.method_times(names, [row["ms_per_image"] for row in rows], title).savefig(time_png, dpi=120)
    viz.method_scores(
        names,
        {
            "insertion": [row["insertion"] for row in rows],
            "deletion": [row["deletion"] for row in rows],
            "insertion - deletion": [row["insertion_minus_deletion"] for row in rows],
        },
        title,
    ).savefig(auc_png, dpi=120)
    return [table_csv, table_md, per_image, time_png, auc_png]


# --------------------------------------------------------------------------------------
# Processes


@dataclass(frozen=True)
class _Group:
    rank: int
    world: int
    local_rank: int
    created: bool


def _join_group(device: str) -> _Group:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (NCCL for CUDA, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Group(0, 1, 0, False)
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return _Group(dist.get_rank(), dist.get_world_size(), local_rank, False)
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    return _Group(rank, world, local_rank, True)


def _device_for(device: str, group: _Group) -> torch.device:
    chosen = torch.device(device)
    if chosen.type == "cuda" and chosen.index is None and group.world > 1:
        return torch.device("cuda", group.local_rank)
    return chosen


def _all_gather(value, group: _Group) -> list:
    if group.world == 1:
        return [value]
    import torch.distributed as dist

    gathered: list = [None] * group.world
    dist.all_gather_object(gathered, value)
    return gathered


def _gather_to_zero(value, group: _Group) -> list | None:
    if group.world == 1:
        return [value]
    import torch.distributed as dist

    gathered: list | None = [None] * group.world if group.rank == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def _barrier(group: _Group) -> None:
    if group.world > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------------------
# The job


def evaluate(
    images: str | Path,
    model: str | LoadedModel = DEFAULT_MODEL,
    methods: str | Iterable[str] = "all",
    n: int = 2000,
    batch_size: int = 32,
    device: str = "cpu",
    out: str | Path = "evaluation",
    *,
    steps: int = 224,
    seed: int = 0,
    weights: str = "pretrained",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Report | None:
    """Run the evaluation job (see the module's docstring) and write its report.

    Args:
        images: a flat folder of images, or one with class subfolders (WordNet ids give
            the target class).
        model: a name of :data:`tgrad.models.MODEL_NAMES`, loaded with ``weights`` on
            ``device``; or a :class:`~tgrad.models.LoadedModel` already on ``device`` (its
            own name and weights then go into ``run.json``).
        methods: ``"all"`` or method names (``tgrad.methods.METHODS``).
        n: how many images to sample (all of them if the folder has fewer).
        batch_size: perturbed images per forward pass of the metrics.
        device: ``cpu``, ``cuda``, ``cuda:1``...; under torchrun ``cuda`` means each
            process's ``LOCAL_RANK`` GPU.
        out: the results folder (created; reused to resume).
        steps: insertion/deletion steps (224 = the paper's protocol).
        seed: seeds the sample.
        weights: ``"pretrained"`` or ``"random"`` (for tests).
        progress: show a tqdm bar with the time left (rank 0).
        log: where status lines go (default: stderr, rank 0 only).

    Returns:
        The :class:`Report` on rank 0 (and in a single process), ``None`` on other ranks.
    """
    names = controls_last(resolve_methods(methods))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps must be an integer >= 1, got {steps!r}")
    samples = sample_images(images, n, seed)
    out = Path(out)
    group = _join_group(device)
    try:
        return _run(
            samples,
            images,
            model,
            names,
            batch_size,
            device,
            out,
            steps,
            seed,
            weights,
            progress,
            log,
            group,
        )
    finally:
        if group.created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(
    samples: list[Sample],
    images: str | Path,
    model: str | LoadedModel,
    names: tuple[str, ...],
    batch_size: int,
    device: str,
    out: Path,
    steps: int,
    seed: int,
    weights: str,
    progress: bool,
    log: Callable[[str], None] | None,
    group: _Group,
) -> Report | None:
    def say(text: str) -> None:
        if group.rank == 0:
            (log or (lambda line: print(line, file=sys.stderr)))(text)

    out.mkdir(parents=True, exist_ok=True)
    torch_device = _device_for(device, group)
    if isinstance(model, str):
        loaded = load_model(model, weights, device=torch_device)
    else:
        loaded, weights = model, model.weights
    settings = {
        "images": str(Path(images).resolve()),
        "model": loaded.name,
        "weights": weights,
        "steps": steps,
        "seed": seed,
        "substrate": "blur",
        "score": "probability",
    }
    _check_settings(out, settings, write=False)

    # Agree on what is done: every rank reads its folder (shared or not), then the keys
    # are pooled, so every rank computes the same list of work still to do.
    records = read_records(out, warn=say)
    keys_by_rank = _all_gather(sorted(records), group)
    _barrier(group)
    if group.rank == 0:
        _check_settings(out, settings, write=True)
    done = {tuple(key) for keys in keys_by_rank for key in keys}
    todo = [(sample, [m for m in names if (sample.key, m) not in done]) for sample in samples]
    todo = [(sample, missing) for sample, missing in todo if missing]
    mine = todo[group.rank :: group.world]
    units = sum(len(missing) for _, missing in todo)
    say(
        f"{len(samples)} image(s) x {len(names)} method(s) on {loaded.name} ({weights}), "
        f"{steps} steps: {len(samples) * len(names) - units} unit(s) done, {units} to do"
        + (f" over {group.world} processes" if group.world > 1 else "")
    )

    stop_after = int(os.environ.get(_STOP_AFTER, "0") or 0)
    made: list[dict] = []
    bar = tqdm(
        total=sum(len(missing) for _, missing in mine),
        desc="evaluating" + (f" (rank 0's share of {group.world})" if group.world > 1 else ""),
        unit="unit",
        disable=not progress or group.rank != 0,
        file=sys.stderr,
    )
    with bar, _open_for_append(_results_file(out, group.rank, group.world)) as results:
        for sample, missing in mine:
            base = {"image": sample.key}
            try:
                x = loaded.preprocessing(load_image(sample.path))[None].to(torch_device)
            except ImageLoadError as error:
                for method in missing:
                    record = {**base, "method": method, "error": str(error)}
                    _append(results, record)
                    made.append(record)
                bar.update(len(missing))
                continue
            target = (
                None if sample.target is None else torch.tensor([sample.target], device=x.device)
            )
            for method in missing:
                numbers, explained = _evaluate_unit(loaded, x, target, method, steps, batch_size)
                target = explained  # the top-1 once known: the same class for every method
                record = {
                    **base,
                    "method": method,
                    "target": int(explained[0]),
                    "target_from": "top1" if sample.target is None else "wnid",
                    **numbers,
                }
                _append(results, record)
                made.append(record)
                bar.set_postfix_str(method, refresh=False)
                bar.update()
                if stop_after and len(made) >= stop_after:
                    raise SystemExit(3)

    # Rank 0 gets one copy of every record: what each rank made now, plus the records read
    # from disk by the lowest rank that had them.
    holder: dict[tuple[str, str], int] = {}
    for rank, keys in enumerate(keys_by_rank):
        for key in keys:
            holder.setdefault(tuple(key), rank)
    owned = [record for key, record in records.items() if holder[key] == group.rank]
    gathered = _gather_to_zero(made + owned, group)
    if gathered is None:
        return None
    merged: dict[tuple[str, str], dict] = {}
    for part in gathered:
        for record in part:
            merged.setdefault((record["image"], record["method"]), record)
    keys = [s.key for s in samples]
    rows = summarize(merged, keys, names)
    errors = {k: r["error"] for (k, _), r in sorted(merged.items()) if "error" in r}
    failed = sorted(set(keys) & errors.keys())
    for key in failed:
        say(f"left out {key}: {errors[key]}")
    if not any(row["n"] for row in rows):
        raise NothingEvaluatedError(
            f"nothing was evaluated: none of the {len(samples)} image(s) in "
            f"{str(images)!r} could be read (see above); no report written"
        )
    title = (
        f"{loaded.name} ({weights}), {len(samples)} image(s) of {Path(images).name}, {steps} steps"
    )
    files = _write_report(out, rows, merged, keys, names, title)
    ms_per_unit = {
        row["method"]: math.fsum(
            merged[(k, row["method"])]["ms_total"]
            for k in sorted(keys)
            if "ms_total" in merged.get((k, row["method"]), {})
        )
        / max(1, row["n"])
        for row in rows
    }
    return Report(rows, out, files, len(samples), failed, ms_per_unit)
