"""``python -m tgrad``: explain images from the command line.

python -m tgrad explain IMAGE [IMAGE ...] [--model NAME] [--target CLASS] [--out FILE]
python -m tgrad explain IMAGE [IMAGE ...] --method M [M ...] [--out FILE]
python -m tgrad models
python -m tgrad sanity IMAGE [IMAGE ...] [--model NAME] [--methods M [M ...]] [--out DIR]
python -m tgrad evaluate --images DIR [--model NAME] [--methods M [M ...]] [--n N] [--out DIR]

Every list of methods is written the same way: names separated by spaces or commas
(``tgrad gradcam``, ``tgrad,gradcam``), or ``all``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from tgrad.cli_parser import MODEL_HELP, build_parser, model_name
from tgrad.decompose import NotDecomposableError, how_exact
from tgrad.images import ImageLoadError, load_image
from tgrad.labels import find_class, top_k
from tgrad.models import (
    DEFAULT_MODEL,
    PIECEWISE_LINEAR,
    LoadedModel,
    WeightsUnavailableError,
    list_models,
    load_model,
)
from tgrad.tgrad import TGrad, TGradResult


def decomposition_table(result: TGradResult, sample: int = 0) -> str:
    """Every term of the logit with its grid, contribution (logit units) and share, then
    the gap. A share is the term's contribution over the sum of the absolute
    contributions of all terms (:func:`tgrad.viz.total_size`), as on the explorer's page:
    it stays meaningful when the logit is small or negative."""
    from tgrad.viz import share_text, total_size

    logit = float(result.logit[sample])
    size = total_size(result, sample)
    width = max(len(t.name) for t in result.terms) + 2
    lines = [f"{'term':<{width}}{'kind':<22}{'grid':>9}{'contribution':>14}  share"]
    for t in result.terms:
        value = float(t.contribution[sample])
        grid = f"{t.grid[0]}x{t.grid[1]}" if t.grid else "-"
        share = share_text(value, size)
        lines.append(f"{t.name:<{width}}{t.kind:<22}{grid:>9}{value:>+14.4f}  {share}")
    total = sum(float(t.contribution[sample]) for t in result.terms)
    lines.append(
        f"sum of {len(result.terms)} terms {total:.5f}, logit {logit:.5f}, "
        f"completeness gap {float(result.gap[sample]):.2e}; shares are of the terms' "
        f"total absolute size {size:.5f}"
    )
    return "\n".join(lines)


def usable_device(name: str) -> str:
    """``--device``: ``name`` when torch can place a tensor there, else a ValueError that
    says what is available (``cuda`` on a machine without a GPU, ``cuda:3`` with one)."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}"
            )
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError):
        raise ValueError(f"--device {name}: torch cannot use it here; use --device cpu") from None
    return name


def method_names(values: Sequence[str]) -> tuple[str, ...]:
    """``--method`` / ``--methods``: names separated by spaces or commas, or ``all``
    (anywhere in the list), in every command."""
    from tgrad.methods import resolve_methods

    names = [n.strip() for value in values for n in value.split(",") if n.strip()]
    return resolve_methods("all" if "all" in names else names)


def _explain(args: argparse.Namespace) -> int:
    usable_device(args.device)
    if args.method is not None:
        return _explain_methods(args)
    if args.out is not None and len(args.images) > 1:
        raise ValueError("--out names one file; with several images use --out-dir")
    loaded: LoadedModel = load_model(args.model, args.weights, device=args.device)
    target = None if args.target is None else find_class(args.target, loaded.categories)
    explain = TGrad(loaded.module, strict=not args.allow_gap)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from tgrad import viz  # matplotlib is only needed once there is something to draw

    for path in tqdm(args.images, desc="explaining", unit="image", disable=len(args.images) < 2):
        x = loaded.preprocessing(load_image(path))[None].to(args.device)
        result = explain(x, target)
        print(f"\n{path}: {loaded.name} ({loaded.weights} weights; {how_exact(result.terms)})")
        for rank, (index, name, prob) in enumerate(top_k(result.logits[0], loaded.categories), 1):
            print(f"  {rank}. {index:>4} {name:<32}{100 * prob:6.2f}%")
        cls = int(result.target[0])
        print(
            f"explaining class {cls} {loaded.categories[cls]!r}, logit {float(result.logit[0]):.4f}"
        )
        print(decomposition_table(result))
        pixels = loaded.preprocessing.to_pixels(x[0].cpu())
        overlay_path = Path(args.out) if args.out else out_dir / f"{Path(path).stem}_tgrad.png"
        strip_path = overlay_path.with_name(overlay_path.stem + "_layers.png")
        chart_path = overlay_path.with_name(overlay_path.stem + "_terms.png")
        Image.fromarray(viz.overlay(pixels, result.saliency[0].cpu(), args.alpha)).save(
            overlay_path
        )
        viz.layer_strip(result, pixels).savefig(strip_path, dpi=120)
        viz.decomposition_chart(result).savefig(chart_path, dpi=120)
        print(f"wrote {overlay_path}, {strip_path} and {chart_path}")
    return 0


def _explain_methods(args: argparse.Namespace) -> int:
    """``explain --method``: one figure (a row per image, a column per method, as the
    paper's Fig. 1) and the time of each method. All images go through as one batch."""
    import torch

    from tgrad.methods import METHODS, explain, preprocessing_options

    names = method_names(args.method)
    loaded: LoadedModel = load_model(args.model, args.weights, device=args.device)
    target = None if args.target is None else find_class(args.target, loaded.categories)
    x = torch.stack([loaded.preprocessing(load_image(p)) for p in args.images]).to(args.device)
    options = {
        **preprocessing_options(loaded.preprocessing),
        "tgrad": {"strict": not args.allow_gap},
    }
    bars: dict[str, tqdm] = {}

    def progress(method: str, done: int, total: int) -> None:
        if method not in bars:
            bars[method] = tqdm(total=total, desc=method, unit="step", leave=False)
        bars[method].update(done - bars[method].n)

    try:
        maps = explain(loaded.module, x, target, names, options, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    n = len(args.images)
    print(f"{loaded.name} ({loaded.weights} weights), {n} image(s) on {args.device}")
    classes = maps.target.tolist()
    logits = maps.logits.gather(1, maps.target[:, None])[:, 0].tolist()
    for path, cls, logit in zip(args.images, classes, logits, strict=True):
        print(f"  {path}: class {cls} {loaded.categories[cls]!r}, logit {logit:.4f}")
    print(f"shared forward + backward: {maps.pass_seconds / n:.4f} s per image")
    print(f"{'method':<22}{'family':<10}{'s per image':>12}  layer")
    for name in names:
        info = METHODS[name]
        layer = maps.layers.get(name, "-") + (" (+ shared pass)" if info.single_pass else "")
        print(f"{name:<22}{info.family:<10}{maps.seconds[name] / n:>12.4f}  {layer}")
    for name, deltas in maps.convergence_delta.items():
        print(
            f"{name}: baseline {METHODS[name].options['baseline']}, convergence delta "
            "sum(attribution) - (y(x) - y(baseline)) in logit units:"
        )
        for path, delta in zip(args.images, deltas.tolist(), strict=True):
            print(f"  {path}: {delta:+.5f}")
    from tgrad import viz  # matplotlib is only needed once there is something to draw

    out = Path(args.out) if args.out else Path(args.out_dir) / "methods.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        f"{Path(p).name}: {loaded.categories[c]}" for p, c in zip(args.images, classes, strict=True)
    ]
    pixels = loaded.preprocessing.to_pixels(x.cpu())
    viz.method_grid(pixels, {k: v.cpu() for k, v in maps.items()}, rows, args.alpha).savefig(
        out, dpi=100
    )
    print(f"wrote {out}")
    return 0


def _models(args: argparse.Namespace) -> int:
    for name, available, where in list_models():
        mark = "yes" if available else "no "
        default = " (default)" if name == DEFAULT_MODEL else ""
        exact = "piecewise linear" if name in PIECEWISE_LINEAR else "tangent intercepts"
        print(f"{name:<20}{mark}  exact by {exact:<20}{where}{default}")
    return 0


def _unique_stems(paths: Sequence[str]) -> list[str]:
    """File stems, numbered where two images share one (``a/x.jpg``, ``b/x.jpg``)."""
    stems = [Path(p).stem for p in paths]
    return [s if stems.count(s) == 1 else f"{s}_{i}" for i, s in enumerate(stems, 1)]


def _sanity(args: argparse.Namespace) -> int:
    import csv

    import torch

    from tgrad import viz
    from tgrad.methods import preprocessing_options
    from tgrad.sanity import MEASURES, cascade, randomization_groups

    usable_device(args.device)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    methods = method_names(args.methods)
    loaded = load_model(args.model, args.weights, device=args.device)
    target = None if args.target is None else find_class(args.target, loaded.categories)
    images = [loaded.preprocessing(load_image(p)) for p in args.images]  # fail before the run
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = ["original"] + [g.name for g in randomization_groups(loaded.module)]
    totals = {s: {m: [0.0] * len(groups) for m in methods} for s in MEASURES}
    rows: list[tuple] = []
    stems = _unique_stems(args.images)
    chunks = range(0, len(images), args.batch_size)
    with tqdm(total=len(groups) * len(chunks), desc="randomizing", unit="step") as bar:
        for start in chunks:
            x = torch.stack(images[start : start + args.batch_size]).to(args.device)
            names = stems[start : start + len(x)]
            maps: dict[str, dict[str, list]] = {n: {m: [] for m in methods} for n in names}
            steps = cascade(
                loaded.module,
                x,
                target,
                methods,
                seed=args.seed,
                mode=args.mode,
                options=preprocessing_options(loaded.preprocessing),
                rederive_target=args.rederive_target,
            )
            for step in steps:
                for i, name in enumerate(names):
                    for m in methods:
                        maps[name][m].append(step.maps[m][i].cpu())
                        for s in MEASURES:
                            value = float(step.similarity[m][s][i])
                            totals[s][m][step.index] += value
                            rows.append((name, step.index, step.group, m, s, f"{value:.6f}"))
                bar.update()
            for name in names:
                Image.fromarray(viz.sanity_grid(groups, maps[name])).save(
                    out / f"{name}_sanity.png"
                )
    means = {
        s: {m: [v / len(images) for v in t] for m, t in by.items()} for s, by in totals.items()
    }
    title = f"{loaded.name} ({loaded.weights}), {args.mode}, mean of {len(images)} image(s)"
    viz.sanity_curves(groups, means, title).savefig(out / "sanity_curves.png", dpi=120)
    with open(out / "sanity_similarity.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("image", "step", "group", "method", "measure", "similarity"))
        writer.writerows(rows)
    print(f"mean spearman_abs similarity to the original map ({len(images)} image(s))")
    print(f"{'step':>4}  {'group':<28}" + "".join(f"{m:>18}" for m in methods))
    for index, group in enumerate(groups):
        values = "".join(f"{means['spearman_abs'][m][index]:>18.3f}" for m in methods)
        print(f"{index:>4}  {group:<28}{values}")
    print(f"wrote {len(images)} grid(s), sanity_curves.png and sanity_similarity.csv to {out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from tgrad.evaluate import evaluate

    usable_device(args.device)
    report = evaluate(
        args.images,
        args.model,
        method_names(args.methods),
        args.n,
        args.batch_size,
        args.device,
        args.out,
        steps=args.steps,
        seed=args.seed,
        weights=args.weights,
    )
    if report is None:  # a rank other than 0 under torchrun
        return 0
    print(report.files[1].read_text(encoding="utf-8"))
    for method, ms in report.ms_per_unit.items():
        print(f"{method:<22}{1000.0 / ms if ms else 0.0:8.2f} images/s (map and both metrics)")
    print(f"wrote {', '.join(f.name for f in report.files)} to {report.out}")
    return 0


COMMANDS = {"explain": _explain, "models": _models, "sanity": _sanity, "evaluate": _evaluate}
"""The function that runs each command of :func:`build_parser`."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; errors a user can fix are printed in one line, exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (
        ImageLoadError,
        WeightsUnavailableError,
        NotDecomposableError,
        ValueError,
        OSError,  # a missing file, an --out-dir that is a file, no permission
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


__all__ = [
    "COMMANDS",
    "MODEL_HELP",
    "build_parser",
    "decomposition_table",
    "main",
    "method_names",
    "model_name",
    "usable_device",
]
