"""The stock transformers image processor that matches a ModularResNet config (no hand-written preprocessing).

1-channel models get the same processors with one step in front: images are converted to luminance (as PIL's "L"
mode computes it), because transformers' pipelines hand every image over as RGB.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BaseImageProcessor, ConvNextImageProcessor, PreTrainedConfig, ViTImageProcessor

# timm's ImageNet evaluation recipe: resize the shorter side to image_size / 0.875, then centre-crop image_size.
IMAGENET_CROP_PCT = 0.875


def image_mode(num_channels: int) -> str:
    """The PIL mode images are converted to before preprocessing: "RGB" for 3 input channels, "L" for 1."""
    return "RGB" if num_channels == 3 else "L"


def _luminance(images: Any) -> Any:
    """PIL images, HxWx3 arrays or 3xHxW tensors (or lists of them) -> the same as 1-channel luminance images."""
    if isinstance(images, (list, tuple)):
        return [_luminance(image) for image in images]
    if isinstance(images, Image.Image):
        return images.convert("L")
    if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] == 3:  # (H, W, 3)
        if images.dtype == np.uint8:
            return Image.fromarray(images).convert("L")
        return (images @ LUMA)[..., None].astype(images.dtype)  # keeps a channel axis, as PIL's "L" does
    if isinstance(images, torch.Tensor) and images.ndim >= 3 and images.shape[-3] == 3:  # (..., 3, H, W)
        weights = torch.tensor(LUMA, dtype=torch.float32, device=images.device)[:, None, None]
        grey = (images.float() * weights).sum(-3, keepdim=True)
        return grey.round().to(images.dtype) if not images.is_floating_point() else grey.to(images.dtype)
    return images


LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, PIL's "L"


class GreyscaleViTImageProcessor(ViTImageProcessor):
    """`ViTImageProcessor` for 1-channel models: converts images to luminance first."""

    def preprocess(self, images: Any, *args: Any, **kwargs: Any):
        return super().preprocess(_luminance(images), *args, **kwargs)


class GreyscaleConvNextImageProcessor(ConvNextImageProcessor):
    """`ConvNextImageProcessor` for 1-channel models: converts images to luminance first."""

    def preprocess(self, images: Any, *args: Any, **kwargs: Any):
        return super().preprocess(_luminance(images), *args, **kwargs)


def processor_registry_key(processor_class: type[BaseImageProcessor]) -> type[PreTrainedConfig]:
    """A config class that exists only to register `processor_class` with `AutoImageProcessor` (which keys its
    registry by config class) without tying it to a model type."""
    return type(
        f"{processor_class.__name__}Key", (PreTrainedConfig,), {"model_type": f"hf_modular_{processor_class.__name__}"}
    )


def image_processor_class(stem_type: str, num_channels: int = 3) -> type[BaseImageProcessor]:
    """The stock processor class for a stem: timm's ImageNet recipe (resize, centre crop) or a plain resize; its
    greyscale variant for 1-channel models."""
    if num_channels == 1:
        return GreyscaleConvNextImageProcessor if stem_type == "imagenet" else GreyscaleViTImageProcessor
    return ConvNextImageProcessor if stem_type == "imagenet" else ViTImageProcessor


def image_processor_settings(config: PreTrainedConfig) -> dict[str, Any]:
    """The arguments of `image_processor_for`'s processor (for a `ModularResNetConfig`): size, crop and statistics.

    Small-input models (CIFAR stem) resize straight to `image_size`, which leaves 32x32 images untouched. ImageNet
    models follow timm's evaluation recipe: resize the shorter side to `image_size / 0.875`, center-crop
    `image_size`.
    """
    statistics = {"image_mean": list(config.image_mean), "image_std": list(config.image_std)}
    if config.stem_type == "imagenet":
        return {"size": {"shortest_edge": config.image_size}, "crop_pct": IMAGENET_CROP_PCT, **statistics}
    return {"size": {"height": config.image_size, "width": config.image_size}, **statistics}


def image_processor_for(config: PreTrainedConfig) -> BaseImageProcessor:
    """Resize, scale to [0, 1] and normalise with the config's mean and std (see `image_processor_settings`)."""
    processor_class = image_processor_class(config.stem_type, config.num_channels)
    return processor_class(**image_processor_settings(config))
