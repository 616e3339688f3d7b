"""The evaluation job's speed per method against its floor: the model's plain batched
inference on the same perturbed images.

One unit of the job (one image, one method) is the map, insertion + deletion
(``2 * (steps - 1) + 2`` forwards, 448 at 224 steps) and Average Drop (2 forwards). Two
floors, the model's plain batched inference on the same perturbed images in chunks of
``--batch-size`` (capped by the memory budget of tgrad.budget, as the job's are):

* the naive floor: the perturbed images built beforehand as plain contiguous tensors, the
  model as loaded, under ``torch.no_grad()``, torch's thread count as it is;
* the raised floor: the model and its inputs in channels-last memory format, under
  ``torch.inference_mode()``, one thread per core, each chunk's perturbed images built in
  place into one preallocated buffer (the job's own way of building them, so the raised
  floor includes that work).

For each method the job runs over the sample (``tgrad.evaluate.evaluate``, into a fresh
folder, the model already loaded), then both floors over the same images. The table gives
images per second of the job's units (map + both metrics, device synchronised, as the job
times them) and of each floor, the job's ratio to each, the map's own time, and the job's
wall clock (images read, records written and the report drawn included). Target for the
ratio to the raised floor: at most 1.1 (issue 15); methods that run forwards of their own
for the map (ScoreCAM, Integrated Gradients, SmoothGrad) are above it by construction.

    python benchmarks/bench_evaluate.py                              # Lite0, 3 photos, 224 steps
    python benchmarks/bench_evaluate.py --device cuda --n 8 --batch-size 64 --methods all
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_metrics import perturbed_images

from tgrad.budget import chunk_buffer, images_per_chunk
from tgrad.evaluate import evaluate, sample_images
from tgrad.images import load_image
from tgrad.methods import resolve_methods
from tgrad.metrics import blur_substrate
from tgrad.models import load_model

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(ASSETS), help="folder (default: assets/)")
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--steps", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--methods", nargs="+", default=["tgrad", "gradcam", "vanilla"], help="or 'all'"
    )
    args = parser.parse_args()
    methods = resolve_methods("all" if "all" in args.methods else args.methods)
    device = torch.device(args.device)
    loaded = load_model("efficientnet_lite0", device=device)
    model = loaded.module
    samples = sample_images(args.images, args.n)
    inputs = [loaded.preprocessing(load_image(s.path))[None].to(device) for s in samples]
    height, width = inputs[0].shape[-2:]
    # Any ranking gives the same forwards; the floor does not depend on the map.
    ranking = torch.rand(height, width, generator=torch.Generator().manual_seed(0))
    perturbed = [
        perturbed_images(x.cpu(), ranking, args.steps).to(device).contiguous() for x in inputs
    ]
    chunk_size = images_per_chunk(model, inputs[0], args.batch_size, gradients=False)
    threads = torch.get_num_threads()
    fast_model = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def floor() -> float:
        """The naive floor, s for the whole sample."""
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            for images in perturbed:
                for chunk in images.split(chunk_size):
                    model(chunk)
        sync()
        return time.perf_counter() - start

    pixels = height * width
    per_step = math.ceil(pixels / args.steps)
    limits = [min(k * per_step, pixels) for k in range(1, args.steps + 1)]
    limits = [k for k in limits if k < pixels]  # the inner points of a curve
    order = torch.argsort(ranking.flatten(), descending=True, stable=True)
    ranks = torch.empty_like(order, dtype=torch.int32)
    ranks[order] = torch.arange(pixels, dtype=torch.int32)
    ranks = ranks.view(1, height, width).to(device)
    fast_inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
    substrates = [blur_substrate(x) for x in fast_inputs]

    def raised_floor() -> float:
        """The raised floor, s for the whole sample."""
        torch.set_num_threads(os.cpu_count() or threads)
        try:
            sync()
            start = time.perf_counter()
            with torch.inference_mode():
                buffer = chunk_buffer(fast_inputs[0], chunk_size)
                changed = torch.empty(
                    (chunk_size, 1, height, width), dtype=torch.bool, device=device
                )
                for x, base in zip(fast_inputs, substrates, strict=True):
                    fast_model(torch.cat([x, base]))
                    jobs = [(c, k) for c in (0, 1) for k in limits]
                    for start_job in range(0, len(jobs), chunk_size):
                        part = jobs[start_job : start_job + chunk_size]
                        for j, (c, k) in enumerate(part):
                            torch.lt(ranks, k, out=changed[j])
                            first, second = (base[0], x[0]) if c == 0 else (x[0], base[0])
                            torch.where(changed[j], first, second, out=buffer[j])
                        fast_model(buffer[: len(part)])
            sync()
            return time.perf_counter() - start
        finally:
            torch.set_num_threads(threads)

    with torch.inference_mode():
        model(perturbed[0][: args.batch_size])  # warm-up
        fast_model(perturbed[0][: args.batch_size].contiguous(memory_format=torch.channels_last))
    naive, raised = floor(), raised_floor()
    name = device.type if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(
        f"Lite0, {len(samples)} image(s), {args.steps} steps ({len(perturbed[0])} forwards per "
        f"image), chunks of {chunk_size}; {name}, threads {threads} (raised floor "
        f"{os.cpu_count()}), torch {torch.__version__}"
    )
    count = len(samples)
    print(
        f"naive floor {count / naive:.3g} img/s, raised floor {count / raised:.3g} img/s "
        f"(raised / naive speed {naive / raised:.2f})"
    )
    print(
        f"{'method':<22}{'job img/s':>10}{'floor img/s':>12}{'ratio':>7}"
        f"{'raised img/s':>13}{'ratio':>7}{'map ms':>9}{'wall img/s':>12}"
    )
    out = Path(tempfile.mkdtemp(prefix="bench_evaluate_"))
    try:
        for method in methods:
            target = out / method
            before, before_raised = floor(), raised_floor()  # before and after the job
            start = time.perf_counter()
            report = evaluate(
                args.images,
                loaded,
                [method],
                args.n,
                args.batch_size,
                str(device),
                target,
                steps=args.steps,
                progress=False,
                log=lambda line: None,
            )
            job = time.perf_counter() - start
            base = (before + floor()) / 2 / len(samples)  # s per image
            fast = (before_raised + raised_floor()) / 2 / len(samples)
            unit = report.ms_per_unit[method] / 1000.0  # s per image: map + both metrics
            print(
                f"{method:<22}{1 / unit:>10.3g}{1 / base:>12.3g}{unit / base:>7.2f}"
                f"{1 / fast:>13.3g}{unit / fast:>7.2f}"
                f"{report.rows[0]['ms_per_image']:>9.1f}{report.rows[0]['n'] / job:>12.3g}"
            )
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
