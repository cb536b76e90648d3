"""hf_modular: decompose a trained CNN classifier into one reusable module per class, share the modules on the
Hugging Face Hub, and compose new classifiers from them without retraining.

The folders follow the data: `models/` (the network, its config and converters) -> `decompose/` (sampling, the
statistics pass, `strategies/`) -> `module/` (the artifact: provenance, names, metrics) -> `compose/` (composed
models) and `hub/` (publishing and cards). Imports run the other way, bottom up: `module/` -> `hub/` -> `models/`
-> `compose/`, `evaluation` -> `decompose/` -> `commands`, `demo`, `train`, `scenarios`.

Importing the package is cheap: it loads neither torch nor transformers, so that the `hf-modular` command answers
`--help` at once. The public names below are loaded on first use (as transformers' own package does). The classes
are registered with transformers' Auto classes and timm's registry (`registration.py`) as soon as transformers or
timm is loaded, before or after this package, so `AutoModel.from_pretrained` and `timm.create_model` find them
after a plain `import hf_modular`.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import types
from typing import TYPE_CHECKING, Any

import wrapt

from .version import __version__

# Public name -> the module that defines it, imported on first use.
_PUBLIC = {
    "PRESETS": "models",
    "ModularResNet": "models",
    "ModularResNetBackbone": "models",
    "ModularResNetConfig": "models",
    "ModularResNetForImageClassification": "models",
    "ModularResNetModel": "models",
    "ModularResNetPreTrainedModel": "models",
    "import_cifar_resnet": "models",
    "load_module": "models",
    "GreyscaleConvNextImageProcessor": "models.processing",
    "GreyscaleViTImageProcessor": "models.processing",
    "ComposedConfig": "compose",
    "ComposedModel": "compose",
    "continuous_learning": "decompose",
    "decompose": "decompose",
    "push_modules": "hub",
}
# Python sets an imported subpackage as an attribute of its package. `hf_modular.decompose` is the function; the
# subpackage of the same name must not replace it when something imports `hf_modular.decompose.pipeline`.
_FUNCTIONS_NAMED_LIKE_A_SUBPACKAGE = {"decompose"}
_SUBMODULES = {info.name for info in pkgutil.iter_modules(__path__)}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
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


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # found once; later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC, *_SUBMODULES})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FUNCTIONS_NAMED_LIKE_A_SUBPACKAGE and isinstance(value, types.ModuleType):
            return  # the import system's own assignment of the subpackage; the public name stays the function
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

# Registration needs the classes, so it imports most of the package, and it must not start while one of the
# package's own modules is half-imported (a module that loads transformers first would be one). So it is tried
# after transformers or timm loads, and again after each of this package's modules finishes loading: the first try
# that finds one of the libraries loaded and none of the modules half-imported registers.
_LIBRARIES = ("transformers", "timm")
_registered = False


def _half_imported_own_modules(notified: object) -> list[str]:
    """This package's submodules that are still executing (`notified` counts as done: its hook runs as it ends).
    `__spec__._initializing` is how the import system itself tells a half-imported module."""
    prefix = __name__ + "."
    return [
        name
        for name, module in list(sys.modules.items())
        if name.startswith(prefix)
        and module is not notified
        and getattr(getattr(module, "__spec__", None), "_initializing", False)
    ]


def _register(notified: object = None) -> None:
    global _registered
    if _registered or not any(library in sys.modules for library in _LIBRARIES):
        return
    if _half_imported_own_modules(notified):
        return
    _registered = True
    try:
        importlib.import_module(f"{__name__}.registration").register()
    except BaseException:
        _registered = False
        raise


for _name in (*_LIBRARIES, *(f"{__name__}.{module}" for module in sorted(_SUBMODULES))):
    wrapt.register_post_import_hook(_register, _name)  # runs at once where the module is already loaded

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
