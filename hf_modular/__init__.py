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

import importlib as _importlib
import pkgutil as _pkgutil
import sys as _sys
import types as _types
import warnings as _warnings
from typing import TYPE_CHECKING, Any

import wrapt as _wrapt

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
_SUBMODULES = {info.name for info in _pkgutil.iter_modules(__path__)}

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
        value = getattr(_importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # found once; later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({"__version__", *_PUBLIC, *_SUBMODULES})


class _Package(_types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FUNCTIONS_NAMED_LIKE_A_SUBPACKAGE and isinstance(value, _types.ModuleType):
            return  # the import system's own assignment of the subpackage; the public name stays the function
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

# Registration needs the classes, so it imports most of the package, and it must not start while one of the
# package's own modules is half-imported (a module that loads transformers first would be one). So it is tried
# after transformers or timm loads, and after each of this package's top-level modules finishes loading: the first
# try that finds one of the libraries loaded and none of the modules half-imported registers. The import that
# triggers it pays for it (torch, timm, the models). In a threaded program, import transformers or timm once in the
# main thread before starting threads: another thread may otherwise use them while registration is still running.
_LIBRARIES = ("transformers", "timm")
_NOT_HOOKED = {"cli", "registration", "version"}  # they never load the libraries; `python -m hf_modular.cli` runs cli
_registered = False


def _half_imported_own_modules(notified: object) -> list[str]:
    """This package's submodules that are still executing (`notified` counts as done: its hook runs as it ends).
    `__spec__._initializing` is the flag CPython's import machinery (`importlib._bootstrap`) sets while a module
    executes: an implementation detail, read here because no public API tells a half-imported module."""
    prefix = __name__ + "."
    return [
        name
        for name, module in list(_sys.modules.items())
        if name.startswith(prefix)
        and module is not notified
        and getattr(getattr(module, "__spec__", None), "_initializing", False)
    ]


def _register(notified: object = None) -> None:
    global _registered
    if _registered or not any(library in _sys.modules for library in _LIBRARIES):
        return
    if _half_imported_own_modules(notified):
        return
    _registered = True
    try:
        _importlib.import_module(f"{__name__}.registration").register()
    except Exception as error:  # never break the user's own `import transformers`; a later hook retries
        _registered = False
        # (Each hook runs once: a later one is this package's next top-level module to finish its import.)
        _warnings.warn(
            f"hf_modular could not register its classes with transformers and timm: {error!r}. "
            "`import hf_modular.registration` shows the full error.",
            RuntimeWarning,
            stacklevel=2,
        )


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

_hooked = (*_LIBRARIES, *(f"{__name__}.{module}" for module in sorted(_SUBMODULES - _NOT_HOOKED)))
for _name in _hooked:
    _wrapt.register_post_import_hook(_register, _name)  # runs at once where the module is already loaded
