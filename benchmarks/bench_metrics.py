"""Insertion + deletion of one map against its floor: the model's plain batched inference
on the same perturbed images.

Nearly all the metric's cost is forward passes (2 * (n_steps - 1) + 2 images per map, 448
at 224 steps). The floor is those very images, built beforehand and fed to the model in
chunks of the same size (``--batch-size``, capped by the memory budget of tgrad.budget
as the metric's are) under ``torch.inference_mode()``; the metric additionally builds
them chunk by chunk and reads the scores. Both are timed in the same run, interleaved;
the table gives the median of each and their ratio (target: at most 1.2).

    python benchmarks/bench_metrics.py                       # Lite0, 224 steps, --batch-size 64
    python benchmarks/bench_metrics.py --steps 56 --repeats 3
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tgrad.budget import images_per_chunk
from tgrad.images import load_image
from tgrad.metrics import blur_substrate, insertion_deletion
from tgrad.models import load_model
from tgrad.tgrad import TGrad

PHOTO = Path(__file__).resolve().parent.parent / "assets" / "coffee.jpg"


def perturbed_images(x: torch.Tensor, saliency: torch.Tensor, n_steps: int) -> torch.Tensor:
    """Every image the metric sends through the model for one map, written out plainly:
    the image, the substrate, then deletion and insertion at each inner step [N,C,H,W]."""
    _, _, height, width = x.shape
    pixels = height * width
    per_step = math.ceil(pixels / n_steps)
    substrate = blur_substrate(x)
    order = torch.sort(saliency.flatten(), descending=True, stable=True).indices
    images = [x, substrate]
    for curve in ("deletion", "insertion"):
        for k in range(1, n_steps + 1):
            count = min(k * per_step, pixels)
            if count == pixels:
                continue
            changed = torch.zeros(pixels, dtype=torch.bool)
            changed[order[:count]] = True
            changed = changed.view(1, 1, height, width)
            if curve == "deletion":
                images.append(torch.where(changed, substrate, x))
            else:
                images.append(torch.where(changed, x, substrate))
    return torch.cat(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    loaded = load_model("efficientnet_lite0")
    model = loaded.module
    x = loaded.preprocessing(load_image(PHOTO))[None]
    saliency = TGrad(model)(x).saliency
    images = perturbed_images(x, saliency[0], args.steps)
    chunk_size = images_per_chunk(model, x, args.batch_size, gradients=False)

    def floor() -> None:
        with torch.inference_mode():
            for chunk in images.split(chunk_size):
                model(chunk)

    def metric() -> None:
        insertion_deletion(model, x, saliency, n_steps=args.steps, batch_size=args.batch_size)

    print(
        f"Lite0, 1 map, {args.steps} steps, {len(images)} forwards in chunks of "
        f"{chunk_size} (--batch-size {args.batch_size}, memory budget); cpu, threads: "
        f"{torch.get_num_threads()}, torch {torch.__version__}"
    )
    with torch.inference_mode():
        model(images[: args.batch_size])  # warm-up
    base, ours = [], []
    for _ in range(args.repeats):  # interleaved, so drifts hit both alike
        for fn, times in ((floor, base), (metric, ours)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    b, o = statistics.median(base), statistics.median(ours)
    print(f"{'plain inference s':>18}{'insertion+deletion s':>22}{'ratio':>8}")
    print(f"{b:>18.2f}{o:>22.2f}{o / b:>8.2f}")
    runs = ", ".join(f"{p:.1f}/{q:.1f}" for p, q in zip(base, ours, strict=True))
    print(f"each run, plain/metric s: {runs}")


if __name__ == "__main__":
    main()
