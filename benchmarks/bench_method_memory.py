"""Peak memory of the slow methods and of the metrics, before and after chunking them by a
memory budget into one reused buffer (tgrad.budget), in the same run.

Each case runs in a fresh Python process, once on the engine of a baseline revision (its
``tgrad/`` extracted with ``git archive``, default f2cd4f6, the code before the change)
and once on the working tree's: efficientnet_lite0 and the coffee photo (one 224 px
image, one torch thread), the model loaded and the input made before the measure starts.
The figure is the rise of peak resident memory (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` once the model is loaded) over the resident memory at that
moment: what one call adds to a process that already holds the model. The cases use each
method's default chunking (``batch_size`` 16 for ScoreCAM, 32 for IG and SmoothGrad, 64
for the metrics):

* ``scorecam``, ``integrated_gradients`` (50 steps, black baseline), ``smoothgrad`` (50
  samples, an absolute sigma of 0.1 on both sides so that the noise is the same):
  ``tgrad.methods.explain`` of that method alone;
* ``metrics_224``: ``insertion_deletion`` at 224 steps and ``average_drop_increase`` of
  a T-Grad map made before the measure: what the explorer's Evaluate tab (and one unit of
  the batch job) runs per method.

"same" is the largest difference between the two revisions' results (maps; curves,
AUCs and probabilities), relative to the largest magnitude of the result. "same, equal
chunks" compares two more runs, baseline and working tree, with the working tree's budget
(``TGRAD_MEMORY_BUDGET_MB``) large enough for the baseline's chunks and the input made
contiguous (the photo comes channels-last from its pixels; the baseline revision's
SmoothGrad and ScoreCAM made their chunks contiguous, its IG channels-last, while the
buffers now follow the input's layout): the same computation, batch for batch. What
separates the two columns is the model's own float rounding at another batch size and
memory layout (on this CPU a Lite0 input gradient at batch 32 differs from the one at
batch 1 by up to 2e-3 of its largest value), not a change of the computation.
Integrated Gradients' weights changed on purpose (SPEC 3: they sum to 1, the baseline
revision's summed to (n-1)/n), so the baseline's map is first multiplied by n/(n-1).

    python benchmarks/bench_method_memory.py                     # every case
    python benchmarks/bench_method_memory.py --only metrics_224 --baseline HEAD~3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ("scorecam", "integrated_gradients", "smoothgrad", "metrics_224")
IG_STEPS = 50
BUDGET_ENV = "TGRAD_MEMORY_BUDGET_MB"  # tgrad.budget.BUDGET_ENV (not imported: see child)
UNBOUNDED_MB = "1000000"  # a budget that never binds: each method's batch_size decides


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(case: str, engine: str, out: str, contiguous: bool) -> None:
    """One case on the engine in the folder ``engine``; results saved to ``out``."""
    sys.path.insert(0, engine)
    import gc

    import torch

    torch.set_num_threads(1)
    from tgrad import TGrad
    from tgrad.images import load_image
    from tgrad.methods import explain
    from tgrad.metrics import average_drop_increase, insertion_deletion
    from tgrad.models import load_model

    assert Path(sys.modules["tgrad"].__file__).is_relative_to(engine)
    loaded = load_model("efficientnet_lite0")
    model = loaded.module
    x = loaded.preprocessing(load_image(ROOT / "assets" / "coffee.jpg"))[None]
    if contiguous:
        x = x.contiguous()
    saliency = TGrad(model)(x).saliency if case == "metrics_224" else None
    options = {
        "integrated_gradients": {"preprocessing": loaded.preprocessing, "steps": IG_STEPS},
        "smoothgrad": {"sigma": 0.1},
    }
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to VmRSS
    base = status_kb("VmRSS")
    start = time.perf_counter()
    if case == "metrics_224":
        curves = insertion_deletion(model, x, saliency, n_steps=224)
        drop = average_drop_increase(model, x, saliency)
        results = {
            "insertion": curves.insertion,
            "deletion": curves.deletion,
            "aucs": torch.stack([curves.insertion_auc, curves.deletion_auc]),
            "probabilities": torch.stack([drop.original, drop.masked]),
        }
    else:
        results = {"map": explain(model, x, None, case, options)[case]}
    seconds = time.perf_counter() - start
    peak = status_kb("VmHWM") - base
    torch.save(results, out)
    print(json.dumps({"peak_kb": peak, "s": seconds}))


def extract(revision: str, folder: Path) -> Path:
    """The ``tgrad/`` package of ``revision`` in ``folder`` (``git archive``)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "tgrad"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def run_case(case: str, engine: Path, out: Path, equal_chunks: bool = False) -> dict:
    """One case in a fresh process; ``equal_chunks``: a budget that never binds (each
    method's ``batch_size`` decides, as in the baseline revision) and a contiguous input."""
    env = dict(os.environ)
    env.pop(BUDGET_ENV, None)
    command = [sys.executable, __file__, "--child", case, "--engine", str(engine)]
    if equal_chunks:
        env[BUDGET_ENV] = UNBOUNDED_MB
        command.append("--contiguous")
    run = subprocess.run(
        [*command, "--save", str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tempfile.gettempdir(),  # not the checkout: the engine comes from --engine only
        env=env,
    )
    if run.returncode != 0:
        raise RuntimeError(f"{case} on {engine}: {run.stderr.strip()[-2000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def difference(case: str, before: Path, after: Path) -> float:
    """Largest |after - before| relative to the largest |after|, over the case's results."""
    import torch

    old, new = torch.load(before), torch.load(after)
    if case == "integrated_gradients":
        old = {k: v * IG_STEPS / (IG_STEPS - 1) for k, v in old.items()}
    worst = 0.0
    for key, value in new.items():
        scale = float(value.abs().max()) or 1.0
        worst = max(worst, float((value - old[key]).abs().max()) / scale)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=CASES, help="cases to run (default: all)")
    parser.add_argument("--baseline", default="f2cd4f6", help="revision to compare with")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--contiguous", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.engine, args.save, args.contiguous)
        return
    with tempfile.TemporaryDirectory(prefix="bench_method_memory_") as tmp:
        work = Path(tmp)
        baseline = extract(args.baseline, work / "baseline")
        print(
            f"Lite0, coffee.jpg (1 image, 224 px), 1 torch thread; peak = VmHWM - VmRSS after "
            f"the model is loaded, MiB; baseline {args.baseline} vs the working tree"
        )
        print(
            f"{'case':<22}{'before MB':>10}{'after MB':>10}{'after/before':>14}"
            f"{'before s':>10}{'after s':>9}{'same':>10}{'same, equal chunks':>20}"
        )
        for case in args.only or CASES:
            sides = ("before", "after", "before_equal", "after_equal")
            files = {side: work / f"{case}.{side}.pt" for side in sides}
            old = run_case(case, baseline, files["before"])
            new = run_case(case, ROOT, files["after"])
            run_case(case, baseline, files["before_equal"], equal_chunks=True)
            run_case(case, ROOT, files["after_equal"], equal_chunks=True)
            diff = difference(case, files["before"], files["after"])
            equal = difference(case, files["before_equal"], files["after_equal"])
            before, after = old["peak_kb"] / 1024, new["peak_kb"] / 1024
            print(
                f"{case:<22}{before:>10.0f}{after:>10.0f}{after / before:>14.2f}"
                f"{old['s']:>10.1f}{new['s']:>9.1f}{diff:>10.1e}{equal:>20.1e}"
            )


if __name__ == "__main__":
    main()
