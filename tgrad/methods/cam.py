"""The CAM family (SPEC 3): GradCAM, GradCAM++, XGradCAM, EigenCAM, ScoreCAM.

All read one layer's activation ``A`` [B,C,h,w] (and for most, ``G = dy/dA``) and differ
only in the channel weights ``w`` [B,C]: the map is ``ReLU(sum_c w_c A_c)``, upsampled
bilinearly (align_corners=False, as cv2.resize) to the input's size. The formulas are
those of pytorch-grad-cam 1.5.7, the reference the tests agree with.

Target layer: SPEC 3's rule (:func:`default_layer`) unless the option ``layer`` names a
module; the chosen name is reported with the map.
"""

from __future__ import annotations

import threading
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tgrad.budget import chunk_buffer, images_per_chunk
from tgrad.capture import Keep, OnGrad, Record, capture
from tgrad.methods.base import Setup, activation, calls_of, input_size
from tgrad.tgrad import upsample

GLOBAL_POOLING = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
"""The pooling that ends the feature extractor of the zoo's models."""

_layer_cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple, str]] = weakref.WeakKeyDictionary()
_layer_lock = threading.Lock()


def _shape(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
    return torch.empty(output.shape, device="meta")  # the shape, no memory


def default_layer(model: nn.Module, x: Tensor) -> str:
    """SPEC 3's CAM target layer: the last module whose output is 4-D with spatial size
    above 1 before the first global (adaptive) pooling, in the order modules return.

    A container returns after its children, so it wins over its last child with the
    same output: VGG -> ``features``, ResNet -> ``layer4``, EfficientNet-Lite0 -> its head
    activation ``_act1``. Found with one forward on one sample (no backward), remembered
    per model and input shape.
    """
    key = tuple(x.shape[1:])
    with _layer_lock:
        cached = _layer_cache.get(model, {}).get(key)
    if cached is not None:
        return cached
    names = {m: n for n, m in model.named_modules() if n}
    record = capture(model, x[:1], None, dict.fromkeys(names, _shape), gradients=False)
    chosen = None
    for call in record.calls:
        if isinstance(call.module, GLOBAL_POOLING):
            break
        shape = call.value.shape
        if len(shape) == 4 and shape[2] * shape[3] > 1:
            chosen = names[call.module]
    if chosen is None:
        raise ValueError(
            "no module returns a 4-D map with spatial size above 1 before global pooling; "
            "name the CAM layer with the option 'layer'"
        )
    with _layer_lock:
        _layer_cache.setdefault(model, {})[key] = chosen
    return chosen


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (as in ``model.named_modules()``)."""
    modules = dict(model.named_modules())
    if name not in modules:
        raise ValueError(f"no module named {name!r} in the model (see model.named_modules())")
    return modules[name]


class CAM:
    """GradCAM: ``w_c = mean over (h,w) of dy/dA_c``. Subclasses change the weights."""

    def __init__(self, setup: Setup, options: dict) -> None:
        self.setup = setup
        self.options = options
        self.layer: str = options["layer"] or default_layer(setup.model, setup.x)
        self.module = find_module(setup.model, self.layer)

    def watch(self, model: nn.Module) -> dict[nn.Module, Keep | None]:
        return {self.module: activation}

    def on_grad(self) -> OnGrad | None:
        return None  # dy/dA kept whole, when the registry says the method keeps gradients

    def channel_weights(self, a: Tensor, g: Tensor, record: Record) -> Tensor:
        return g.mean((2, 3))

    def layer_map(self, a: Tensor, g: Tensor, record: Record) -> Tensor:
        """The map on the layer's grid before the ReLU [B,h,w]."""
        return torch.einsum("bc,bchw->bhw", self.channel_weights(a, g, record), a)

    def attribute(self, record: Record) -> Tensor:
        calls = calls_of(record, self.module)
        if not calls:
            raise ValueError(f"the CAM layer {self.layer!r} was not called in the forward pass")
        call = calls[0]  # as pytorch-grad-cam: the first call of a reused module
        a = call.value
        if a is None or a.dim() != 4:
            raise ValueError(f"the CAM layer {self.layer!r} must return [B,C,h,w]")
        g = call.grad if call.grad is not None else torch.zeros_like(a)
        cam = self.layer_map(a, g, record).clamp(min=0)
        return upsample(cam, input_size(record))


def _sum_hw(t: Tensor) -> Tensor:
    return t.sum((2, 3), keepdim=True)


class GradCAMPlusPlus(CAM):
    """GradCAM++ (eq. 19 of Chattopadhay et al.): ``alpha = g^2 / (2 g^2 + sum(A) g^3)``
    where ``g != 0``, ``w_c = sum over (h,w) of alpha * ReLU(g)``."""

    def channel_weights(self, a: Tensor, g: Tensor, record: Record) -> Tensor:
        g2 = g * g
        alpha = g2 / (2 * g2 + _sum_hw(a) * (g2 * g) + 1e-6)
        alpha = torch.where(g != 0, alpha, 0.0)
        return (g.clamp(min=0) * alpha).sum((2, 3))


class XGradCAM(CAM):
    """XGradCAM: ``w_c = sum over (h,w) of g * A / sum(A_c)``."""

    def channel_weights(self, a: Tensor, g: Tensor, record: Record) -> Tensor:
        return (g * a / (_sum_hw(a) + 1e-7)).sum((2, 3))


class EigenCAM(CAM):
    """EigenCAM: the activations (positions x channels, centred per channel) projected on
    their first principal component, ``U_1 * s_1``, by an SVD on the tensor's device.

    The SVD leaves the sign of a component free; it is fixed so that the projection's
    largest magnitude is positive (flipped when ``|min| > |max|``, as pytorch-grad-cam's
    ``get_2d_projection_with_sign_correction``), the same on every device.
    """

    def layer_map(self, a: Tensor, g: Tensor, record: Record) -> Tensor:
        batch, _, h, w = a.shape
        rows = a.nan_to_num(0.0).flatten(2).transpose(1, 2)  # [B, hw, C]
        rows = rows - rows.mean(1, keepdim=True)
        u, s, _ = torch.linalg.svd(rows, full_matrices=False)
        projection = u[..., 0] * s[:, :1]  # = rows @ v_1, [B, hw]
        flip = projection.amin(1).abs() > projection.amax(1).abs()
        projection = torch.where(flip[:, None], -projection, projection)
        return projection.view(batch, h, w)


class ScoreCAM(CAM):
    """ScoreCAM: ``w = softmax over channels of y(x * M_c)``, with ``M_c`` channel c of the
    activation upsampled to the input (bilinear, align_corners=True as pytorch-grad-cam)
    and min-max normalised. One forward per channel, no hooks; channels whose activation
    is constant give the same all-zero mask, evaluated once. The masks and masked images are
    built on the activation's device a chunk at a time, the images written in place into
    one buffer reused by every chunk; a chunk holds at most ``batch_size`` (16) images and
    at most what the memory budget allows (:mod:`tgrad.budget`)."""

    def channel_weights(self, a: Tensor, g: Tensor, record: Record) -> Tensor:
        model, x, target = self.setup.model, record.input, record.target
        batch, channels = a.shape[:2]
        size = input_size(record)
        lo, hi = torch.aminmax(a.flatten(2), dim=2)
        varying = (hi > lo).nonzero()  # [N, 2] (b, c); a constant channel's mask is 0
        scores = torch.empty(batch, channels, device=x.device, dtype=x.dtype)
        total = len(varying) + 1
        with torch.no_grad():
            zero = model(torch.zeros_like(x[:1]))[0]  # x * (all-zero mask)
            scores[:] = zero[target][:, None]
            if not len(varying):
                return torch.softmax(scores, dim=1)
            chunk = images_per_chunk(model, x, int(self.options["batch_size"]), gradients=False)
            chunk = min(chunk, len(varying))
            images = chunk_buffer(x, chunk)
            for start in range(0, len(varying), chunk):
                bs, cs = varying[start : start + chunk].T
                masks = F.interpolate(a[bs, cs][:, None], size, mode="bilinear", align_corners=True)
                low, high = torch.aminmax(masks.flatten(1), dim=1)
                masks.sub_(low[:, None, None, None]).div_((high - low + 1e-8)[:, None, None, None])
                inputs = images[: len(bs)]
                torch.index_select(x, 0, bs, out=inputs)  # the chunk's images, in place
                inputs.mul_(masks)
                logits = model(inputs)
                scores[bs, cs] = logits.gather(1, target[bs][:, None])[:, 0]
                del logits
                self.setup.report("scorecam", start + len(bs) + 1, total)
        return torch.softmax(scores, dim=1)
