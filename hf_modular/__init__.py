"""hf_modular: decompose a trained CNN classifier into one reusable module per class, share the modules on the
Hugging Face Hub, and compose new classifiers from them without retraining.

Importing the package registers `ModularResNetConfig` and the models with transformers' Auto classes and the
`modular_resnet*` architectures with timm's registry.
"""

from importlib.metadata import PackageNotFoundError, version

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from . import (
    hub,  # noqa: E402  (hf_modular.hub.push_modules, ...)
    timm_models,  # noqa: F401  (registers the timm architectures)
)
from .compose import ComposedConfig, ComposedModel
from .configuration_modular_resnet import PRESETS, ModularResNetConfig
from .decompose import decompose
from .decompose.continual import continuous_learning
from .hub import push_modules
from .modeling_modular_resnet import (
    ModularResNet,
    ModularResNetForImageClassification,
    ModularResNetModel,
    ModularResNetPreTrainedModel,
)

try:
    __version__ = version("hf_modular")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"


def load_module(path_or_repo: str, **kwargs) -> ModularResNetForImageClassification:
    """Load a class module (local directory or Hub repo id); `kwargs` go to `from_pretrained` (e.g. `revision`).

    Raises ValueError when the checkpoint is a plain classifier rather than a module.
    """
    model = ModularResNetForImageClassification.from_pretrained(path_or_repo, **kwargs)
    if not model.config.is_module:
        raise ValueError(
            f"{path_or_repo} is a plain classifier, not a class module (its config has no `module` section). "
            "Decompose it first: hf_modular.decompose(model, dataset)."
        )
    return model


AutoConfig.register(ModularResNetConfig.model_type, ModularResNetConfig, exist_ok=True)
AutoModel.register(ModularResNetConfig, ModularResNetModel, exist_ok=True)
AutoModelForImageClassification.register(ModularResNetConfig, ModularResNetForImageClassification, exist_ok=True)
AutoConfig.register(ComposedConfig.model_type, ComposedConfig, exist_ok=True)
AutoModelForImageClassification.register(ComposedConfig, ComposedModel, exist_ok=True)

__all__ = [
    "PRESETS",
    "ComposedConfig",
    "ComposedModel",
    "ModularResNet",
    "ModularResNetConfig",
    "ModularResNetForImageClassification",
    "ModularResNetModel",
    "ModularResNetPreTrainedModel",
    "__version__",
    "continuous_learning",
    "decompose",
    "hub",
    "push_modules",
    "load_module",
]
