"""T-Grad against its physical floor: one plain forward + backward (vanilla gradient).

All are timed in the same run, interleaved, on the same inputs; the table reports the
median of each and their ratio (the machine is noisy, ratios are what to compare).
T-Grad is the default strict mode: every operation of the forward is shown to the
decomposition (SPEC 1's intercepts), which is how it is exact beyond piecewise-linear
networks (EfficientNet-B0's SiLU and squeeze-excite gates, MobileNetV3's Hardswish,
ConvNeXt's GELU and LayerNorm).

    .venv/bin/python -m benchmarks.bench_tgrad        # six models at batch 1 and 8
    .venv/bin/python -m benchmarks.bench_tgrad --models convnext_tiny --batches 1 --repeats 5

``--capture-from REV`` also times T-Grad with ``tgrad/capture.py`` as it was at git
revision ``REV`` (the rest of the engine as checked out), interleaved with the others:
how a change to the capture moved the cost, in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

import tgrad.decompose
from tgrad.capture import exact_float32
from tgrad.models import load_model
from tgrad.tgrad import TGrad


def vanilla_gradient(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The floor: forward, then d(top-1 logit)/dx, nothing recorded.

    In the same float32 precision as T-Grad's pass (TF32 off on CUDA), so that the
    ratio measures T-Grad's own work, not a change of arithmetic.
    """
    with exact_float32(x.device):
        x = x.detach().requires_grad_(True)
        logits = model(x)
        y = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        return torch.autograd.grad(y, x)[0]


def capture_at(rev: str) -> Callable:
    """``capture`` of ``tgrad/capture.py`` at git revision ``rev``."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{rev}:tgrad/capture.py"], cwd=root, check=True, capture_output=True
    ).stdout.decode()
    module = types.ModuleType(f"capture_at_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:tgrad/capture.py", "exec"), module.__dict__)
    return module.capture


@contextlib.contextmanager
def using(capture: Callable) -> Iterator[None]:
    """The decomposition records its pass with ``capture`` inside the block."""
    current = tgrad.decompose.capture
    tgrad.decompose.capture = capture
    try:
        yield
    finally:
        tgrad.decompose.capture = current


def timed(fn, *args, sync=lambda: None) -> float:
    """Seconds of one call of ``fn(*args)``, device work included."""
    start = time.perf_counter()
    fn(*args)
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=[
            "vgg16",
            "resnet50",
            "efficientnet_lite0",
            "efficientnet_b0",
            "mobilenet_v3_large",
            "convnext_tiny",
        ],
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--capture-from", metavar="REV", help="also time REV's capture")
    args = parser.parse_args()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    other = capture_at(args.capture_from) if args.capture_from else None

    def explained_with_other(explain: TGrad, x: torch.Tensor) -> None:
        with using(other):
            explain(x)

    print(f"device: {args.device}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    extra = f"{'at ' + str(args.capture_from):>14}{'ratio':>7}" if other else ""
    header = f"{'model':<20}{'batch':>6}{'fwd+bwd s':>12}{'T-Grad s':>12}{'ratio':>8}"
    print(f"{header}{extra}{'terms':>7}")
    for name in args.models:
        # weights do not change the arithmetic; random ones need no download
        model = load_model(name, weights="random", device=args.device).module
        explain = TGrad(model)
        for batch in args.batches:
            x = torch.randn(batch, 3, args.size, args.size, device=args.device)
            timed(vanilla_gradient, model, x, sync=sync)  # warm-up
            terms = len(explain(x).terms)
            if other is not None:
                explained_with_other(explain, x)  # warm-up
            base, ours, theirs = [], [], []
            for _ in range(args.repeats):  # interleaved, so drifts hit all alike
                base.append(timed(vanilla_gradient, model, x, sync=sync))
                ours.append(timed(explain, x, sync=sync))
                if other is not None:
                    theirs.append(timed(explained_with_other, explain, x, sync=sync))
            b, o = statistics.median(base), statistics.median(ours)
            row = f"{name:<20}{batch:>6}{b:>12.3f}{o:>12.3f}{o / b:>8.2f}"
            if other is not None:
                t = statistics.median(theirs)
                row += f"{t:>14.3f}{t / b:>7.2f}"
            print(f"{row}{terms:>7}")


if __name__ == "__main__":
    main()
