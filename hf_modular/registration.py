"""hf_modular's classes in transformers' Auto classes. (timm's registry is filled where the timm architectures are
defined, `models/timm_models.py`, by timm's own decorator.) The package calls `register()` once transformers or
timm is loaded; see `hf_modular/__init__.py`."""

from __future__ import annotations

from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .compose import ComposedConfig, ComposedModel
from .models import (
    ModularResNetBackbone,
    ModularResNetConfig,
    ModularResNetForImageClassification,
    ModularResNetModel,
)
from .models.processing import GreyscaleConvNextImageProcessor, GreyscaleViTImageProcessor, processor_registry_key


def register() -> None:
    """Register the configs, models and image processors (again is harmless)."""
    AutoConfig.register(ModularResNetConfig.model_type, ModularResNetConfig, exist_ok=True)
    AutoModel.register(ModularResNetConfig, ModularResNetModel, exist_ok=True)
    AutoModelForImageClassification.register(ModularResNetConfig, ModularResNetForImageClassification, exist_ok=True)
    AutoBackbone.register(ModularResNetConfig, ModularResNetBackbone, exist_ok=True)
    AutoConfig.register(ComposedConfig.model_type, ComposedConfig, exist_ok=True)
    AutoModelForImageClassification.register(ComposedConfig, ComposedModel, exist_ok=True)
    # transformers finds a saved processor's class by name among the registered ones. The greyscale processors of
    # 1-channel models are registered under keys of their own, so that RGB models keep transformers' own ViT/ConvNext
    # processors (readable without hf_modular) and a model's config never picks a processor for it.
    for processor_class in (GreyscaleViTImageProcessor, GreyscaleConvNextImageProcessor):
        key = processor_registry_key(processor_class)
        AutoImageProcessor.register(key, image_processor_classes={"torchvision": processor_class}, exist_ok=True)
