"""The evaluation job's speed per method against its floor: the model's plain batched
inference on the same perturbed images.

One unit of the job (one image, one method) is the map, insertion + deletion
(``2 * (steps - 1) + 2`` forwards, 448 at 224 steps) and Average Drop (2 forwards). The
floor is the perturbed images of insertion + deletion, built beforehand and fed to the
model in chunks of ``--batch-size`` (capped by the memory budget of tgrad.budget, as the
job's are) under ``torch.inference_mode()``. For each method the
job runs over the sample (``tgrad.evaluate.evaluate``, into a fresh folder, the model
already loaded), then the floor over the same images. The table gives images per second of
the job's units (map + both metrics, device synchronised, as the job times them) and of
the floor, their ratio, the map's own time, and the job's wall clock (images read, records
written and the report drawn included). Target for the ratio: at most 1.2; methods that
run forwards of their own for the map (ScoreCAM, Integrated Gradients, SmoothGrad) are
above it by construction.

    python benchmarks/bench_evaluate.py                              # Lite0, 3 photos, 224 steps
    python benchmarks/bench_evaluate.py --device cuda --n 8 --batch-size 64 --methods all
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_metrics import perturbed_images

from tgrad.budget import images_per_chunk
from tgrad.evaluate import evaluate, sample_images
from tgrad.images import load_image
from tgrad.methods import resolve_methods
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
    perturbed = [perturbed_images(x.cpu(), ranking, args.steps).to(device) for x in inputs]
    chunk_size = images_per_chunk(model, inputs[0], args.batch_size, gradients=False)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def floor() -> float:
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            for images in perturbed:
                for chunk in images.split(chunk_size):
                    model(chunk)
        sync()
        return time.perf_counter() - start

    with torch.inference_mode():
        model(perturbed[0][: args.batch_size])  # warm-up
    name = device.type if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(
        f"Lite0, {len(samples)} image(s), {args.steps} steps ({len(perturbed[0])} forwards per "
        f"image), chunks of {chunk_size}; {name}, threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}"
    )
    print(
        f"{'method':<22}{'job img/s':>10}{'floor img/s':>12}{'ratio':>7}{'map ms':>9}"
        f"{'wall img/s':>12}"
    )
    out = Path(tempfile.mkdtemp(prefix="bench_evaluate_"))
    try:
        for method in methods:
            target = out / method
            before = floor()  # the floor before and after the job: drifts hit both alike
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
            unit = report.ms_per_unit[method] / 1000.0  # s per image: map + both metrics
            print(
                f"{method:<22}{1 / unit:>10.3g}{1 / base:>12.3g}{unit / base:>7.2f}"
                f"{report.rows[0]['ms_per_image']:>9.1f}{report.rows[0]['n'] / job:>12.3g}"
            )
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
