"""The model family: `ModularResNetConfig`, the networks, their image processors, the timm registry entries, and
converters from timm ResNets and CIFAR checkpoints. Every other layer asks these classes for the structure
(`model.blocks()`, `model.steps()`, `model.sites()`) instead of re-deriving it."""

from . import timm_models  # noqa: F401  (registers the modular_resnet* architectures with timm)
from .configuration_modular_resnet import ARCHITECTURE_FIELDS, PRESETS, ModularResNetConfig
from .convert import CIFAR10_LABELS
from .modeling_modular_resnet import (
    MaskedConv2d,
    MaskedReLU,
    ModularResNet,
    ModularResNetBackbone,
    ModularResNetForImageClassification,
    ModularResNetModel,
    ModularResNetPreTrainedModel,
    ShortcutA,
    import_cifar_resnet,
    load_module,
)
from .processing import image_mode, image_processor_for

__all__ = [
    "ARCHITECTURE_FIELDS",
    "CIFAR10_LABELS",
    "PRESETS",
    "MaskedConv2d",
    "MaskedReLU",
    "ModularResNet",
    "ModularResNetBackbone",
    "ModularResNetConfig",
    "ModularResNetForImageClassification",
    "ModularResNetModel",
    "ModularResNetPreTrainedModel",
    "ShortcutA",
    "image_mode",
    "image_processor_for",
    "import_cifar_resnet",
    "load_module",
]
