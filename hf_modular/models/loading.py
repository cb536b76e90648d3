"""Loading policy for ModularResNet checkpoints: safetensors only unless the caller opts in, every tensor accounted
for, corrupt files named, and the Hub commit a model was loaded at remembered (`model.source_revision`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from safetensors import SafetensorError

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".th", ".ckpt"}


def load_checked(load: Callable[..., Any], source: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
    """Run transformers' `from_pretrained` (`load`) under this package's policy; returns what the caller asked for
    (the model, or `(model, loading_info)` with `output_loading_info=True`)."""
    kwargs.setdefault("use_safetensors", True)
    output_loading_info = kwargs.pop("output_loading_info", False)
    source = str(source)
    refuse_pickle_only_directory(source, kwargs["use_safetensors"])
    try:
        model, info = load(source, *args, output_loading_info=True, **kwargs)
    except SafetensorError as error:
        raise ValueError(
            f"{source}: model.safetensors is corrupt or truncated ({error}). Download or save it again "
            "(delete the cached copy first when it came from the Hub)."
        ) from error
    except RuntimeError as error:
        if "mismatch" not in str(error):
            raise
        raise ValueError(
            f"The weights in {source} do not match its config (a tensor has another shape; the table above "
            "lists them). Fix config.json so it describes the checkpoint, or re-save the model."
        ) from error

    # A trunk-only checkpoint may get a fresh head, and a classifier's head is ignored by the trunk model
    # (transformers reports both); old checkpoints lack batch-norm step counters. Any other gap is an error.
    def tolerated(key: str) -> bool:
        fresh_head = key.startswith("fc.") and not model.config.is_module  # a module's head is never random
        return fresh_head or key.endswith("num_batches_tracked")

    missing = [key for key in info["missing_keys"] if not tolerated(key)]
    unexpected = [key for key in info["unexpected_keys"] if not tolerated(key)]
    if missing or unexpected:
        raise ValueError(
            f"The checkpoint in {source} does not match its config: {len(missing)} tensors missing "
            f"(e.g. {', '.join(sorted(missing)[:3]) or '-'}), {len(unexpected)} unexpected "
            f"(e.g. {', '.join(sorted(unexpected)[:3]) or '-'}). Fix config.json (layers, widths, block_type) "
            "so it describes the checkpoint, or re-save the model."
        )
    model.source_revision = resolved_revision(source, kwargs)
    return (model, info) if output_loading_info else model


def resolved_revision(source: str, kwargs: dict[str, Any]) -> str | None:
    """The commit sha a Hub repo was loaded at (its cached snapshot folder's name); None for local directories."""
    if Path(source).exists():
        return None
    keys = ("revision", "subfolder", "cache_dir", "token", "local_files_only")
    hub_kwargs = {key: kwargs[key] for key in keys if kwargs.get(key) is not None}
    try:
        return Path(hf_hub_download(source, "config.json", **hub_kwargs)).parent.name
    except Exception:  # provenance is best effort; the model itself loaded fine
        return None


def refuse_pickle_only_directory(source: str, use_safetensors: bool) -> None:
    """A local directory with only a pickle checkpoint gets an error that explains the opt-in."""
    directory = Path(source)
    if not use_safetensors or not directory.is_dir() or any(directory.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise OSError(
            f"{directory} holds only pickle checkpoints ({', '.join(pickles)}), which can run code when loaded. "
            "Re-save the model as safetensors, or pass use_safetensors=False if you trust the file."
        )
    raise OSError(f"{directory} has no model.safetensors: it holds no weights. Save a model there first.")
