"""How a PIL image becomes a classifier's input: resize, centre crop, normalise.

:class:`Preprocessing` does what torchvision's ``ImageClassification`` transform does,
and converts between pixel space (RGB in [0, 1]) and the normalised space the model's
input lives in. :func:`lite_preprocessing` is the EfficientNet-Lite models' (SPEC section
6), :data:`LITE0_PREPROCESSING` Lite0's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.models import WeightsEnum

__all__ = ["LITE0_PREPROCESSING", "LITE_CROP_PADDING", "Preprocessing", "lite_preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """How a PIL image becomes the network's input, as torchvision's ImageClassification.

    Attributes:
        resize: length in pixels the *shorter* image side is resized to.
        crop: side in pixels of the square centre crop taken after resizing.
        interpolation: ``"bicubic"`` or ``"bilinear"`` (PIL resampling, antialiased).
        mean: per-channel (R, G, B) mean subtracted from pixel values in [0, 1].
        std: per-channel (R, G, B) divisor applied after subtracting ``mean``.

    "Pixel space" below means RGB values in [0, 1]; "normalised" means
    ``(pixels - mean) / std``, the space the model's input lives in.
    """

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(
                f"interpolation must be 'bicubic' or 'bilinear', not {self.interpolation!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per RGB channel")
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) larger than resize ({self.resize})")

    @classmethod
    def from_weights(cls, weights: WeightsEnum) -> Preprocessing:
        """The preprocessing that a torchvision weights enum entry's ``transforms()`` does."""
        transform = weights.transforms()
        mean = tuple(float(v) for v in transform.mean)
        std = tuple(float(v) for v in transform.std)
        return cls(
            resize=int(transform.resize_size[0]),
            crop=int(transform.crop_size[0]),
            interpolation=transform.interpolation.value,
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Resize, centre-crop and normalise one image.

        Resizes the shorter side to ``resize`` (PIL, antialiased), takes the centre
        ``crop`` x ``crop`` square, scales to [0, 1] and normalises. The result is
        identical to torchvision's ``ImageClassification`` transform with these settings.

        Args:
            image: any PIL image; it is converted to RGB first.

        Returns:
            float32 tensor ``[3, crop, crop]`` in normalised space, on the CPU.
        """
        pixels = TF.convert_image_dtype(TF.pil_to_tensor(self.crop_image(image)), torch.float32)
        return self.normalize(pixels)

    def crop_image(self, image: Image.Image, scale: int = 1) -> Image.Image:
        """The region of ``image`` the model sees, as an RGB PIL image, at ``scale`` times
        the model's input size (``scale * crop`` pixels a side).

        Resizes the shorter side to ``scale * resize`` (PIL, antialiased) and takes the
        centre ``scale * crop`` square: the same region as at ``scale=1``, with ``scale``
        times the pixels (for pictures drawn larger than the model's input).
        """
        mode = TF.InterpolationMode(self.interpolation)
        size = [scale * self.resize]
        resized = TF.resize(image.convert("RGB"), size, interpolation=mode, antialias=True)
        return TF.center_crop(resized, [scale * self.crop])

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel space -> normalised space: ``(pixels - mean) / std``.

        Args:
            pixels: ``[..., 3, H, W]`` RGB values in [0, 1], any float dtype and device.

        Returns:
            A new tensor of the same shape, dtype and device.
        """
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def to_pixels(self, x: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        """Normalised space -> pixel space: ``x * std + mean``, the inverse of ``normalize``.

        Args:
            x: ``[..., 3, H, W]`` normalised input, any float dtype and device.
            clamp: clip the result to [0, 1] (for display); ``False`` gives the exact
                affine inverse even for values outside the image range.

        Returns:
            RGB values in [0, 1] (when clamped), same shape, dtype and device as ``x``.
        """
        mean, std = self._stats(x)
        pixels = x * std + mean
        return pixels.clamp(0.0, 1.0) if clamp else pixels

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if like.dim() < 3 or like.shape[-3] != 3:
            raise ValueError(f"expected a [..., 3, H, W] tensor, got shape {tuple(like.shape)}")
        options: dict[str, Any] = {"dtype": like.dtype, "device": like.device}
        mean = torch.tensor(self.mean, **options).view(3, 1, 1)
        std = torch.tensor(self.std, **options).view(3, 1, 1)
        return mean, std


LITE_CROP_PADDING = 32
"""Pixels between the resized shorter side and the centre crop of an EfficientNet-Lite."""


def lite_preprocessing(crop: int) -> Preprocessing:
    """An EfficientNet-Lite model's evaluation preprocessing for a ``crop`` px input.

    Bicubic resize of the shorter side to ``crop + 32``, centre crop ``crop``, mean
    127/255 and std 128/255 on every channel (TensorFlow's ``MEAN_RGB = 127``,
    ``STDDEV_RGB = 128`` for the Lite models).

    The resize follows the reference evaluation of the TensorFlow EfficientNet code
    (``preprocessing.py``: the crop is ``crop / (crop + CROP_PADDING)`` of the shorter
    side with ``CROP_PADDING = 32``), which is what timm's ports of these weights encode
    as ``crop_pct`` 0.875 / 0.882 / 0.890 for Lite0 / Lite1 / Lite2: 224 of 256, 240 of
    272, 260 of 292. A fixed ratio of 0.875 would give 274 and 297 instead; on the
    bundled photos both choices give the same top-1 classes, and the crop+32 rule is
    the one the weights were evaluated with.
    """
    return Preprocessing(
        resize=crop + LITE_CROP_PADDING,
        crop=crop,
        interpolation="bicubic",
        mean=(127.0 / 255.0,) * 3,
        std=(128.0 / 255.0,) * 3,
    )


LITE0_PREPROCESSING = lite_preprocessing(224)
"""EfficientNet-Lite0's: resize 256 bicubic, centre crop 224, mean 127/255, std 128/255."""
