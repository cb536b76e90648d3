"""Publishing on the Hugging Face Hub: one repo per module, parent or composition, each with its model card.

This layer sits below the model classes (as transformers' hub utilities sit below its models): it reads configs
and models through transformers' Auto classes and never imports the modeling code.
"""

from .cards import composed_card, module_card, parent_card
from .mixin import HubMixin
from .publish import (
    DEFAULT_NAME_TEMPLATE,
    PUSH_ONLY_OPTIONS,
    REQUIRED_FILES,
    PartialPushError,
    PushOptions,
    PushResult,
    RepoHoldsAnotherModel,
    check_module_pushes,
    check_write_access,
    push_directory,
    push_model,
    push_modules,
    refuse_replacing_another_module,
    upload_folder,
)

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
