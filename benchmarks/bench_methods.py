"""Every method of ``tgrad.methods`` against its reference library, and the shared pass
against its floor.

Per method: our time per image (the method alone, shared pass included), the reference's
time on the same model, batch and device (pytorch-grad-cam 1.5.7 for the CAM family and
FullGrad, captum 0.9.0 for the gradient family), and ours / reference. Then the eight
single-pass methods asked for together against one plain forward + backward. Timings are
medians of interleaved repeats (the machine may be noisy: compare ratios).

    python benchmarks/bench_methods.py                          # Lite0, VGG-16, ResNet-50, batch 4
    python benchmarks/bench_methods.py --models efficientnet_lite0 --methods gradcam fullgrad
    python benchmarks/bench_methods.py --steps 10 --samples 10  # shorter IG / SmoothGrad

ScoreCAM runs one forward per channel of its layer (1280 on Lite0's default layer, 2048
on ResNet-50's), so it is timed, ours and pytorch-grad-cam's alike, on a layer with few
channels (:data:`SCORECAM_LAYERS`, or ``--scorecam-layer``), named in its row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_tgrad import vanilla_gradient
from tgrad.methods import METHODS, explain
from tgrad.models import load_model

REFERENCE_NAMES = (
    "tgrad",
    "gradcam",
    "gradcam++",
    "xgradcam",
    "eigencam",
    "scorecam",
    "fullgrad",
    "vanilla",
    "input_x_gradient",
    "integrated_gradients",
    "smoothgrad",
)
SINGLE_PASS = tuple(n for n in REFERENCE_NAMES if METHODS[n].single_pass)
SCORECAM_LAYERS = {
    "efficientnet_lite0": "_blocks.1._bn2",  # 24 channels, 56 x 56 at 224 px
    "vgg16": "features.9",  # 128 channels
    "resnet50": "layer1.0.conv1",  # 64 channels
}
"""ScoreCAM's layer per model in this benchmark (the default layer for any other model)."""


def reference(name: str, model, layer, x, target, options: dict) -> Callable[[], object] | None:
    """The reference library's call for a method (None for T-Grad, which has none)."""
    import pytorch_grad_cam as gc
    from captum import attr
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(t)) for t in target]
    cams = {
        "gradcam": gc.GradCAM,
        "gradcam++": gc.GradCAMPlusPlus,
        "xgradcam": gc.XGradCAM,
        "eigencam": gc.EigenCAM,
        "scorecam": gc.ScoreCAM,
    }
    if name in cams:
        cam = cams[name](model=model, target_layers=[layer])
        return lambda: cam(x, targets)
    if name == "fullgrad":
        cam = gc.FullGrad(model=model, target_layers=[])
        return lambda: cam(x, targets)
    batch = x.shape[0]
    if name == "vanilla":
        return lambda: attr.Saliency(model).attribute(x, target=target, abs=False)
    if name == "input_x_gradient":
        return lambda: attr.InputXGradient(model).attribute(
            x.clone().requires_grad_(), target=target
        )
    if name == "integrated_gradients":
        o = options[name]
        return lambda: attr.IntegratedGradients(model).attribute(
            x,
            baselines=o["baseline"],
            target=target,
            n_steps=o["steps"],
            method="riemann_trapezoid",
            internal_batch_size=max(batch, o["batch_size"]),
        )
    if name == "smoothgrad":
        o = options[name]
        return lambda: attr.NoiseTunnel(attr.Saliency(model)).attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=o["samples"],
            nt_samples_batch_size=max(1, o["batch_size"] // batch),
            stdevs=o["sigma"],
            target=target,
            abs=False,
        )
    return None


def median_times(fns: dict[str, Callable[[], object]], repeats: int, sync) -> dict[str, float]:
    """Median seconds of each function, run interleaved after one warm-up each."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
        sync()
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_model(model_name: str, args: argparse.Namespace, sync: Callable[[], None]) -> None:
    """Print the table of one model."""
    loaded = load_model(
        model_name,
        weights="pretrained" if model_name == "efficientnet_lite0" else "random",
        device=args.device,
    )
    model = loaded.module
    x = torch.randn(
        args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)
    ).to(args.device)
    with torch.no_grad():
        target = model(x).argmax(1)
    black = loaded.preprocessing.normalize(torch.zeros_like(x))
    options = {
        "integrated_gradients": {"baseline": black, "steps": args.steps, "batch_size": 32},
        "smoothgrad": {"samples": args.samples, "sigma": 0.1, "batch_size": 32},
    }
    layer_name = explain(model, x[:1], methods="gradcam").layers["gradcam"]
    layer = dict(model.named_modules())[layer_name]
    print(f"\n{model_name} (CAM layer {layer_name})")
    print(f"{'method':<22}{'ours s/img':>12}{'reference s/img':>17}{'ours/ref':>10}")
    for name in args.methods:
        method_layer, label = layer, name
        if name == "scorecam":
            scorecam_layer = args.scorecam_layer or SCORECAM_LAYERS.get(model_name, layer_name)
            options[name] = {"layer": scorecam_layer}
            method_layer = dict(model.named_modules())[scorecam_layer]
            label = f"scorecam ({scorecam_layer})"
        fns = {
            "ours": lambda name=name: explain(
                model, x, target, methods=name, options={name: options.get(name, {})}
            )
        }
        ref = reference(name, model, method_layer, x, target, options)
        if ref is not None:
            fns["ref"] = ref
        t = median_times(fns, args.repeats, sync)
        ours = t["ours"] / args.batch
        if "ref" in t:
            r = t["ref"] / args.batch
            print(f"{label:<22}{ours:>12.4f}{r:>17.4f}{ours / r:>10.2f}")
        else:
            print(f"{label:<22}{ours:>12.4f}{'-':>17}{'-':>10}")
    t = median_times(
        {
            "floor": lambda: vanilla_gradient(model, x),
            "all": lambda: explain(model, x, target, methods=SINGLE_PASS),
        },
        args.repeats,
        sync,
    )
    print(
        f"8 single-pass methods together {t['all'] / args.batch:.4f} s/img, "
        f"one forward+backward {t['floor'] / args.batch:.4f} s/img, "
        f"ratio {t['all'] / t['floor']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0", "vgg16", "resnet50"])
    parser.add_argument("--methods", nargs="+", default=list(REFERENCE_NAMES))
    parser.add_argument("--scorecam-layer", help="ScoreCAM's layer (default: SCORECAM_LAYERS)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=50, help="Integrated Gradients steps")
    parser.add_argument("--samples", type=int, default=50, help="SmoothGrad samples")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:  # the references run in PyTorch's default precision; ours turns TF32 off
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    print(f"device: {args.device}, threads: {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"batch {args.batch}, {args.size} px, IG {args.steps} steps, SmoothGrad {args.samples}")
    for model_name in args.models:
        bench_model(model_name, args, sync)


if __name__ == "__main__":
    main()
