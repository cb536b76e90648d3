"""hf_modular: decompose a trained CNN classifier into one reusable module per class, share the modules on the
Hugging Face Hub, and compose new classifiers from them without retraining.

The folders follow the data: `models/` (the network, its config and converters) -> `decompose/` (sampling, the
statistics pass, `strategies/`) -> `module/` (the artifact: provenance, names, metrics) -> `compose/` (composed
models) and `hub/` (publishing and cards). Imports run the other way, bottom up: `module/` -> `hub/` -> `models/`
-> `compose/`, `evaluation` -> `decompose/` -> `cli`, `demo`, `train`, `scenarios`.

Importing the package registers `ModularResNetConfig` and the models with transformers' Auto classes and the
`modular_resnet*` architectures with timm's registry.
"""

from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from . import hub
from .compose import ComposedConfig, ComposedModel
from .decompose import continuous_learning, decompose
from .hub import push_modules
from .models import (
    PRESETS,
    ModularResNet,
    ModularResNetBackbone,
    ModularResNetConfig,
    ModularResNetForImageClassification,
    ModularResNetModel,
    ModularResNetPreTrainedModel,
    import_cifar_resnet,
    load_module,
)
from .models.processing import GreyscaleConvNextImageProcessor, GreyscaleViTImageProcessor, processor_registry_key
from .version import __version__

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

__all__ = [
    "PRESETS",
    "ComposedConfig",
    "ComposedModel",
    "ModularResNet",
    "ModularResNetBackbone",
    "ModularResNetConfig",
    "ModularResNetForImageClassification",
    "ModularResNetModel",
    "ModularResNetPreTrainedModel",
    "__version__",
    "continuous_learning",
    "decompose",
    "hub",
    "import_cifar_resnet",
    "load_module",
    "push_modules",
]
