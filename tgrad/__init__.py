"""T-Grad: a CNN's logit split exactly into an input term and one bias term per layer.

    from tgrad import TGrad, load_model
    loaded = load_model("efficientnet_lite0")          # offline, ImageNet weights
    result = TGrad(loaded.module)(x)                    # x: [B,3,H,W], normalised
    result.saliency, result.terms, result.gap

The engine knows nothing of any UI: torch in, torch out.
"""

# ``tgrad.decompose`` stays the module (it is callable as its ``decompose`` function)
from tgrad import decompose
from tgrad.decompose import Decomposition, NotDecomposableError, Term
from tgrad.models import WeightsUnavailableError, load_model
from tgrad.tgrad import TGrad, TGradResult

__all__ = [
    "Decomposition",
    "NotDecomposableError",
    "TGrad",
    "TGradResult",
    "Term",
    "WeightsUnavailableError",
    "decompose",
    "load_model",
]
