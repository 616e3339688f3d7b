"""How the GPU's TF32 setting affects the completeness gap (run on a CUDA machine).

    python benchmarks/gpu_precision.py

cuDNN runs float32 convolutions in TF32 by default on Ampere and later; the gap must
stay below 1e-4 * max(1, |logit|). The engine turns TF32 off for its pass
(``tgrad.capture.exact_float32``); this script also runs it with that switched off, to
show why. Prints the worst relative gap per model and setting.
"""

from contextlib import nullcontext
from unittest import mock

import torch
import torchvision

from tests.nets import perturb
from tgrad.decompose import decompose
from tgrad.models import load_model


def main() -> None:
    x = torch.randn(8, 3, 224, 224, device="cuda")
    print(f"{'model':<20}{'cudnn.allow_tf32':>18}{'worst gap / max(1,|y|)':>26}")
    for name in ["vgg16", "resnet50", "efficientnet_lite0"]:
        if name == "efficientnet_lite0":
            model = load_model(name, device="cuda").module
        else:
            model = perturb(getattr(torchvision.models, name)(weights=None)).cuda()
        for tf32 in (True, False):
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            with mock.patch("tgrad.capture.exact_float32", lambda device: nullcontext()):
                dec = decompose(model, x, strict=False)
            rel = (dec.gap.abs() / dec.logit.abs().clamp(min=1)).max()
            print(f"{name:<20}{tf32!s:>18}{float(rel):>26.2e}")


if __name__ == "__main__":
    main()
