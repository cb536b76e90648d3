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
from transformers.image_transforms import to_channel_dimension_format
from transformers.image_utils import ChannelDimension, infer_channel_dimension_format

# timm's ImageNet evaluation recipe: resize the shorter side to image_size / 0.875, then centre-crop image_size.
IMAGENET_CROP_PCT = 0.875


def image_mode(num_channels: int) -> str:
    """The PIL mode images are converted to before preprocessing: "RGB" for 3 input channels, "L" for 1."""
    return "RGB" if num_channels == 3 else "L"


LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, PIL's "L"


def _luminance(image: Any, input_data_format: ChannelDimension | str | None = None) -> Any:
    """One image -> the same kind of image, in the same channel layout, with its RGB turned into one luminance
    channel as PIL's "L" mode computes it: a PIL image, or a numpy array or torch tensor, channels first or last
    (`input_data_format`, or inferred as transformers infers it). Grey images, and anything else, pass through."""
    if isinstance(image, Image.Image):
        return image.convert("L")
    if not isinstance(image, (np.ndarray, torch.Tensor)) or image.ndim != 3:
        return image  # (H, W) is grey already; the processor rejects what is not an image
    # The layout the processor itself will assume (the same channel counts, the same tie-break: channels first).
    layout = (
        ChannelDimension(input_data_format)
        if input_data_format is not None
        else infer_channel_dimension_format(image, num_channels=(1, 3, 4))
    )
    channels_last = to_channel_dimension_format(image, ChannelDimension.LAST, layout)
    if channels_last.shape[-1] != 3:
        return image
    is_torch = isinstance(image, torch.Tensor)
    if image.dtype == (torch.uint8 if is_torch else np.uint8):
        # PIL's own conversion, so that an array or tensor gives exactly the pixels the same PIL image gives.
        array = channels_last.cpu().numpy() if is_torch else channels_last
        grey = np.array(Image.fromarray(np.ascontiguousarray(array)).convert("L"))[..., None]  # writable, for torch
        grey = torch.from_numpy(grey).to(image.device) if is_torch else grey
    elif is_torch:
        weights = torch.tensor(LUMA, dtype=torch.promote_types(image.dtype, torch.float32), device=image.device)
        grey = channels_last.to(weights.dtype) @ weights
        grey = (grey if image.is_floating_point() else grey.round()).to(image.dtype)[..., None]
    else:
        grey = channels_last @ LUMA
        grey = (grey if np.issubdtype(image.dtype, np.floating) else np.rint(grey)).astype(image.dtype)[..., None]
    return to_channel_dimension_format(grey, layout, ChannelDimension.LAST)


class LuminanceFirst:
    """Mixin for a transformers image processor of 1-channel models: each image becomes luminance first."""

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: ChannelDimension | str | None = None,
        **kwargs: Any,
    ) -> Any:
        # transformers calls this once per image, after splitting batches, with the caller's input_data_format.
        return super().process_image(_luminance(image, input_data_format), do_convert_rgb, input_data_format, **kwargs)


class GreyscaleViTImageProcessor(LuminanceFirst, ViTImageProcessor):
    """`ViTImageProcessor` for 1-channel models: converts each image to luminance first."""


class GreyscaleConvNextImageProcessor(LuminanceFirst, ConvNextImageProcessor):
    """`ConvNextImageProcessor` for 1-channel models: converts each image to luminance first."""


# transformers finds a processor's keyword arguments as `<class name>Kwargs` beside the class (its tests check that
# `valid_kwargs` is that class): the same as the stock processors'.
GreyscaleViTImageProcessorKwargs = GreyscaleViTImageProcessor.valid_kwargs
GreyscaleConvNextImageProcessorKwargs = GreyscaleConvNextImageProcessor.valid_kwargs


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
