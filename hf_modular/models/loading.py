"""Loading policy for ModularResNet checkpoints: safetensors only unless the caller opts in, every tensor accounted
for, corrupt files named, and the Hub commit a model was loaded at remembered (`model.source_revision`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from safetensors import SafetensorError
from transformers import PreTrainedConfig

from ..module import REPORT_NAME

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".th", ".ckpt"}
CHECKPOINT_SUFFIXES = (*PICKLE_SUFFIXES, ".tar")  # files that are a checkpoint to convert, not a saved model


def split_revision(name: str, revision: str | None) -> tuple[str, str | None]:
    """`org/name@revision` (as `push` prints it, and `compose` takes it) as the repo id and its revision; a local
    path, which may hold '@' itself, as it is."""
    if "@" not in name or Path(name).expanduser().exists():
        return name, revision
    repo_id, _, pinned = name.partition("@")
    if revision is not None and revision != pinned:
        raise ValueError(f"{name} pins revision {pinned} and --revision asks for {revision}: give one of them.")
    return repo_id, pinned


def check_local_path(name: str | os.PathLike) -> None:
    """Raise FileNotFoundError when `name` can only be a local path and does not exist (it starts like a path, or has
    more parts than a repo id's two), rather than a Hub lookup of a name that is no repo id. `mods/cow-module` might
    be either, so it is left to the Hub, as transformers leaves it."""
    name = os.fspath(name)
    if Path(name).expanduser().exists():
        return
    if name.startswith(("/", "./", "../", "~", os.sep)) or len(Path(name).parts) > 2:
        raise FileNotFoundError(f"No such directory: {name}. Give a saved model's directory or a Hub repo id.")


def load_checked(load: Callable[..., Any], source: str | os.PathLike | None, *args: Any, **kwargs: Any) -> Any:
    """Run transformers' `from_pretrained` (`load`) under this package's policy; returns what the caller asked for
    (the model, or `(model, loading_info)` with `output_loading_info=True`).

    Missing, unexpected and mismatched tensors follow transformers' convention (initialised and reported; a shape
    mismatch raises transformers' own error unless `ignore_mismatched_sizes=True`), with one exception: a class
    module's masks and head define it, so a module checkpoint without them is refused.
    """
    kwargs.setdefault("use_safetensors", True)
    output_loading_info = kwargs.pop("output_loading_info", False)
    source = None if source is None else str(source)  # None: `config=` and `state_dict=` give everything
    if source is not None:  # a local directory's weights sit in its `subfolder` when one is given, as on the Hub
        local = os.path.join(source, kwargs["subfolder"]) if kwargs.get("subfolder") else source
        config_given = kwargs.get("config") is not None
        # transformers loads a weights file named with `config=`: safetensors, or a pickle the caller opted in to.
        weights_file = config_given and (local.endswith(".safetensors") or kwargs["use_safetensors"] is not True)
        check_saved_model(local, config_given=config_given, expected="modular_resnet", weights_file=weights_file)
        if not config_given and not Path(source).exists():
            check_local_path(source)
            check_hub_model_type(source, "modular_resnet", kwargs)
        refuse_pickle_only_directory(local, kwargs["use_safetensors"])
    try:
        model, info = load(source, *args, output_loading_info=True, **kwargs)
    except SafetensorError as error:
        raise ValueError(
            f"{source}: model.safetensors is corrupt or truncated ({error}). Download or save it again "
            "(delete the cached copy first when it came from the Hub)."
        ) from error
    if model.config.is_module:
        defining = [key for key in info["missing_keys"] if key.endswith(".mask") or key.startswith("fc.")]
        if defining:
            raise ValueError(
                f"{source or 'The state dict'} is a class module without its {', '.join(sorted(defining)[:3])}: "
                "a module is defined by its masks and head, and random ones would answer wrongly. Load the "
                "module's own checkpoint (or its parent, to decompose it again)."
            )
    model.source_revision = resolved_revision(source, kwargs) if source is not None else None
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
            "Re-save the model as safetensors, or, if you trust the file, pass use_safetensors=False (--allow-pickle "
            "to hf-modular info, evaluate or decompose)."
        )
    raise OSError(f"{directory} has no model.safetensors: it holds no weights. Save a model there first.")


def check_saved_model(
    source: str,
    config_given: bool = False,
    expected: str | tuple[str, ...] | None = None,
    weights_file: bool = False,
) -> None:
    """Refuse a local path that holds no saved model of the `expected` model type(s), saying what it is instead:
    transformers would call a file an invalid JSON file, and load a directory without config.json with a default
    config. `config_given`: the caller passes the config itself; `weights_file`: a file is a weights file to load
    with it. (A path that does not exist is left to the loader: it may be a Hub repo id.)"""
    path = Path(source)
    if path.is_file() and not weights_file:
        hint = (
            " (a CIFAR ResNet checkpoint converts with hf_modular.import_cifar_resnet, or `hf-modular import FILE "
            "--output DIR`)"
            if path.suffix in CHECKPOINT_SUFFIXES
            else ""
        )
        raise ValueError(f"{source} is a file; give a saved model's directory or a Hub repo id{hint}.")
    if not path.is_dir() or config_given:
        return
    if not (path / "config.json").is_file():
        if (path / REPORT_NAME).is_file():
            raise FileNotFoundError(
                f"{source} is a decomposition's output: it holds one module per class. Give one of its *-module "
                f"directories, or compose them all and use the composition: `hf-modular compose {source} --output "
                "DIR` (ComposedModel.from_modules([directory]))."
            )
        if any(path.parent.name[0] != "." for path in path.glob("*-module/config.json")):  # a run stopped early
            raise FileNotFoundError(
                f"{source} holds module directories but no decomposition report: a decomposition that has not "
                "finished. Rerun it to finish it, or give its *-module directories one by one."
            )
        raise FileNotFoundError(
            f"{source} has no config.json, so it holds no saved model. Give the directory that save_pretrained or "
            "an hf-modular command wrote."
        )
    model_type = _model_type(path / "config.json")
    wanted = (expected,) if isinstance(expected, str) else tuple(expected or ())
    if wanted and model_type is not None and model_type not in wanted:
        raise ValueError(f"{source} is {OTHER_MODELS.get(model_type) or _foreign(model_type)}.")


def check_hub_model_type(repo_id: str, expected: str, kwargs: dict[str, Any]) -> None:
    """`check_saved_model`'s model-type check for a Hub repo: its config.json is read first (and cached for the load
    itself). A repo that cannot be read is left to the loader, which says why."""
    keys = ("revision", "subfolder", "cache_dir", "token", "local_files_only", "force_download")
    try:
        config, _ = PreTrainedConfig.get_config_dict(repo_id, **{k: kwargs[k] for k in keys if kwargs.get(k)})
    except (OSError, ValueError):
        return
    model_type = config.get("model_type")
    if model_type is not None and model_type != expected:
        raise ValueError(f"{repo_id} is {OTHER_MODELS.get(model_type) or _foreign(model_type)}.")


def _foreign(model_type: str) -> str:
    return (
        f"a {model_type!r} model, which hf_modular does not load: it works with ModularResNet classifiers (convert a "
        "transformers ResNet with ModularResNetForImageClassification.from_transformers, a timm ResNet with "
        "from_timm)"
    )


# What a directory of another of the model types hf_modular knows is, and how to load it (`check_saved_model`).
OTHER_MODELS = {
    "modular_resnet": "a classifier or class module: load it with ModularResNetForImageClassification.from_pretrained "
    "(or AutoModelForImageClassification, which loads either)",
    "modular_composed": "a composed model: load it with ComposedModel.from_pretrained (or "
    "AutoModelForImageClassification, which loads either)",
    "resnet": "a transformers ResNet: convert it with ModularResNetForImageClassification.from_transformers (or "
    "`hf-modular import DIR --output NEW_DIR`)",
}


def _model_type(config: Path) -> str | None:
    """The `model_type` a saved config.json names; a file that is not a JSON object is an error that says what to
    do (transformers' own says only that it is not valid JSON)."""
    try:
        found = json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{config} is not valid JSON ({error}): the save was cut short or the file was edited. Save the model "
            "again (save_pretrained, or the hf-modular command that wrote it), or fix the file by hand."
        ) from error
    except OSError:
        return None  # unreadable: transformers' own loader says why
    return found.get("model_type") if isinstance(found, dict) else None
