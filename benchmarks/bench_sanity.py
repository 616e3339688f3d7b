"""The full cascading randomization of T-Grad against its floor: the same number of
T-Grad explanations of the unchanged model.

A cascade of G groups explains G + 1 models; what it adds to those explanations is one
deep copy of the model, the seeded re-initialisation of one group per step and the four
similarity measures (scipy / scikit-image, on the CPU). Both are timed in the same run,
interleaved; the table gives the median of each, their ratio, and the cascade's own parts.

    python benchmarks/bench_sanity.py                      # Lite0, coffee.jpg, 3 repeats
    python benchmarks/bench_sanity.py --batch 4 --threads 2 --mode independent
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tgrad.images import load_image
from tgrad.methods import explain
from tgrad.models import load_model
from tgrad.sanity import cascade, randomization_groups

ASSETS = Path(__file__).resolve().parent.parent / "assets"
PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=1, help="photos per cascade (1 to 4)")
    parser.add_argument("--mode", default="cascading", choices=("cascading", "independent"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    x = torch.stack(
        [loaded.preprocessing(load_image(ASSETS / f"{p}.jpg")) for p in PHOTOS[: args.batch]]
    )
    steps = len(randomization_groups(loaded.module)) + 1
    explain(loaded.module, x, methods="tgrad")  # warm-up
    full, floor, own = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        inside = sum(s.seconds for s in cascade(loaded.module, x, mode=args.mode))
        full.append(time.perf_counter() - start)
        own.append(inside)
        start = time.perf_counter()
        for _ in range(steps):
            explain(loaded.module, x, methods="tgrad")
        floor.append(time.perf_counter() - start)
    f, b = statistics.median(full), statistics.median(floor)
    print(
        f"{loaded.name}, batch {args.batch}, {steps} steps ({args.mode}), "
        f"{args.threads} thread(s), median of {args.repeats}"
    )
    print(f"  full cascade of T-Grad       {f:8.2f} s  ({f / steps:.3f} s per step)")
    print(f"  {steps} explanations (floor)   {b:8.2f} s")
    print(f"  ratio                        {f / b:8.2f}")
    own_median = statistics.median(own)
    print(f"  sum of the steps' own times  {own_median:8.2f} s (step 0's includes the copy)")


if __name__ == "__main__":
    main()
