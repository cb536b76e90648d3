"""The stock transformers image processor that matches a ModularResNet config (no hand-written preprocessing)."""

from __future__ import annotations

from transformers import BaseImageProcessor, ConvNextImageProcessor, PreTrainedConfig, ViTImageProcessor

# timm's ImageNet evaluation recipe: resize the shorter side to image_size / 0.875, then centre-crop image_size.
IMAGENET_CROP_PCT = 0.875


def image_mode(num_channels: int) -> str:
    """The PIL mode images are converted to before preprocessing: "RGB" for 3 input channels, "L" for 1."""
    return "RGB" if num_channels == 3 else "L"


def image_processor_class(stem_type: str) -> type[BaseImageProcessor]:
    """The stock processor class for a stem: timm's ImageNet recipe (resize, centre crop) or a plain resize."""
    return ConvNextImageProcessor if stem_type == "imagenet" else ViTImageProcessor


def image_processor_for(config: PreTrainedConfig) -> BaseImageProcessor:
    """Resize, scale to [0, 1] and normalise with the config's mean and std (a `ModularResNetConfig`).

    Small-input models (CIFAR stem) resize straight to `image_size`, which leaves 32x32 images untouched. ImageNet
    models follow timm's evaluation recipe: resize the shorter side to `image_size / 0.875`, center-crop
    `image_size`.
    """
    if config.stem_type == "imagenet":
        return ConvNextImageProcessor(
            size={"shortest_edge": config.image_size},
            crop_pct=IMAGENET_CROP_PCT,
            image_mean=list(config.image_mean),
            image_std=list(config.image_std),
        )
    return ViTImageProcessor(
        size={"height": config.image_size, "width": config.image_size},
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
    )
