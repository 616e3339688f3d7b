"""The evaluation job itself: one unit of work (an image and a method: the map, then the
metrics) and :func:`evaluate`, which runs the units still to do (see :mod:`tgrad.evaluate`)."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tqdm import tqdm

from tgrad.evaluate.distributed import (
    _all_gather,
    _barrier,
    _device_for,
    _gather_to_zero,
    _Group,
    _join_group,
)
from tgrad.evaluate.records import (
    _append,
    _check_settings,
    _open_for_append,
    _results_file,
    read_records,
)
from tgrad.evaluate.report import NothingEvaluatedError, Report, _write_report, summarize
from tgrad.evaluate.sample import Sample, sample_images
from tgrad.images import ImageLoadError, load_image
from tgrad.methods import explain, preprocessing_options, resolve_methods
from tgrad.methods.controls import controls_last
from tgrad.metrics import average_drop_increase, insertion_deletion
from tgrad.models import DEFAULT_MODEL, LoadedModel, load_model

_STOP_AFTER = "TGRAD_EVALUATE_STOP_AFTER"  # test hook: exit(3) after this many new units


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
