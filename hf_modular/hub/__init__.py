"""Publishing on the Hugging Face Hub: one repo per module, parent or composition, each with its model card.

This layer sits below the model classes (as transformers' hub utilities sit below its models): it reads configs
and models through transformers' Auto classes and never imports the modeling code.
"""

from .cards import composed_card, module_card, parent_card
from .checks import (
    DEFAULT_NAME_TEMPLATE,
    RepoHoldsAnotherModel,
    check_module_pushes,
    check_write_access,
    refuse_replacing_another_module,
)
from .mixin import HubMixin
from .options import PUSH_ONLY_OPTIONS, PushOptions, PushResult
from .publish import REQUIRED_FILES, PartialPushError, push_directory, push_model, push_modules, upload_folder

__all__ = [
    "DEFAULT_NAME_TEMPLATE",
    "PUSH_ONLY_OPTIONS",
    "REQUIRED_FILES",
    "HubMixin",
    "PartialPushError",
    "PushOptions",
    "PushResult",
    "RepoHoldsAnotherModel",
    "check_module_pushes",
    "check_write_access",
    "composed_card",
    "module_card",
    "parent_card",
    "push_directory",
    "push_model",
    "push_modules",
    "refuse_replacing_another_module",
    "upload_folder",
]
