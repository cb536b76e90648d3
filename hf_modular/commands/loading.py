"""Finding and loading the model a command names, with errors that say what the argument is."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from transformers import AutoModelForImageClassification

from ..models import ModularResNetForImageClassification
from ..models.loading import check_local_path, check_saved_model
from ..saving import OUR_MODEL_TYPES


def model_source(name: str) -> str:
    """A local path that does not exist is an error here, not a Hub lookup of a malformed repo id."""
    check_local_path(name)
    local = Path(name).expanduser()
    return str(local) if local.exists() else name


def load_classifier(args: argparse.Namespace):
    return _from_pretrained(ModularResNetForImageClassification, args)


def load_model(args: argparse.Namespace):
    """A classifier, a module or a composed model, by what its config.json says."""
    return _from_pretrained(AutoModelForImageClassification, args)


def _from_pretrained(model_class: Any, args: argparse.Namespace) -> Any:
    """`args.model` loaded by `model_class`, with errors that say what the argument is instead of what a loader
    expected of it; pickle weights only with --allow-pickle."""
    source = model_source(args.model)
    check_saved_model(source, expected=OUR_MODEL_TYPES)  # and not, say, a ViT, read as a ResNet
    # None: safetensors where there are some, else the pickle (False would refuse safetensors altogether).
    pickle = {"use_safetensors": None} if getattr(args, "allow_pickle", False) else {}
    try:
        return model_class.from_pretrained(source, revision=args.revision, **pickle)
    except OSError as error:
        if Path(source).exists():
            raise
        raise OSError(
            f"{args.model} is not a local directory, and as a Hub repo id it could not be loaded: {error}"
        ) from error
