"""The argument parser of ``python -m tgrad`` (its commands run in :mod:`tgrad.cli`)."""

from __future__ import annotations

import argparse

from tgrad.models import DEFAULT_MODEL, MODEL_NAMES, is_timm

MODEL_HELP = (
    f"one of {', '.join(MODEL_NAMES)} (default {DEFAULT_MODEL}), or timm:<name> for any timm "
    "model (pip install timm); `models` says how each is exact"
)


def model_name(value: str) -> str:
    """``--model``: a name of the zoo or ``timm:<name>``."""
    if value in MODEL_NAMES or is_timm(value):
        return value
    raise argparse.ArgumentTypeError(
        f"unknown model {value[:40]!r}; choose one of {', '.join(MODEL_NAMES)} or timm:<name>"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m tgrad``."""
    from tgrad.methods import METHODS

    methods_help = f"names separated by spaces or commas, or 'all' ({', '.join(METHODS)})"
    parser = argparse.ArgumentParser(prog="python -m tgrad", description="T-Grad explanations")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser(
        "explain", help="explain images: top-5, decomposition, overlay, layer maps, term chart"
    )
    ex.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    ex.add_argument("--model", default=DEFAULT_MODEL, type=model_name, help=MODEL_HELP)
    ex.add_argument("--weights", default="pretrained", choices=("pretrained", "random"))
    ex.add_argument("--target", help="class index or name (default: the top-1 class)")
    ex.add_argument(
        "--out", help="overlay PNG for a single image (default: OUT_DIR/<stem>_tgrad.png)"
    )
    ex.add_argument("--out-dir", default=".", help="folder for the PNGs (default: current)")
    ex.add_argument("--alpha", type=float, default=0.5, help="opacity of the map over the image")
    ex.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ex.add_argument(
        "--allow-gap",
        action="store_true",
        help="explain models that do not decompose exactly, reporting the gap",
    )
    ex.add_argument(
        "--method",
        nargs="+",
        help=f"compare methods instead: {methods_help}; writes one figure (--out, default "
        "OUT_DIR/methods.png) and prints each method's time",
    )
    sub.add_parser("models", help="list the models and whether their weights are available")
    sa = sub.add_parser(
        "sanity",
        help="cascading randomization (SPEC 5): maps and their similarity as layers go random",
    )
    sa.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    sa.add_argument("--model", default=DEFAULT_MODEL, type=model_name, help=MODEL_HELP)
    sa.add_argument("--weights", default="pretrained", choices=("pretrained", "random"))
    sa.add_argument(
        "--methods",
        nargs="+",
        default=["tgrad", "guided_backprop"],
        help=f"methods to check: {methods_help} (default: tgrad guided_backprop)",
    )
    sa.add_argument("--out", default="sanity", help="folder for the PNGs and CSV")
    sa.add_argument("--seed", type=int, default=0, help="seeds the random weights")
    sa.add_argument("--mode", default="cascading", choices=("cascading", "independent"))
    sa.add_argument("--target", help="class index or name (default: each image's top-1)")
    sa.add_argument(
        "--rederive-target",
        action="store_true",
        help="explain each randomized model's own top-1 class, not the original one",
    )
    sa.add_argument("--batch-size", type=int, default=8, help="images per cascade")
    sa.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ev = sub.add_parser(
        "evaluate",
        help="faithfulness of the methods over a folder of images: table (Table 1) and charts "
        "(Figs. 3-4); resumable; splits over processes under torchrun",
    )
    ev.add_argument(
        "--images",
        required=True,
        help="a folder of images, flat or with class subfolders (WordNet ids such as "
        "n01440764 give the class explained; otherwise the top-1)",
    )
    ev.add_argument("--model", default=DEFAULT_MODEL, type=model_name, help=MODEL_HELP)
    ev.add_argument("--weights", default="pretrained", choices=("pretrained", "random"))
    ev.add_argument(
        "--methods",
        nargs="+",
        default=["all"],
        help=f"methods to score: {methods_help} (default: all)",
    )
    ev.add_argument(
        "--n",
        "-n",
        "--num-images",
        dest="n",
        type=int,
        default=2000,
        help="images sampled (default 2000); under torchrun write -n or --num-images: "
        "torchrun reads --n as an abbreviation of its own options",
    )
    ev.add_argument("--batch-size", type=int, default=32, help="perturbed images per forward pass")
    ev.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (torchrun: cuda)")
    ev.add_argument("--out", default="evaluation", help="results folder (reused to resume)")
    ev.add_argument("--steps", type=int, default=224, help="insertion/deletion steps")
    ev.add_argument("--seed", type=int, default=0, help="seeds the sample of images")
    return parser
