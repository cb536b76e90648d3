"""The members of a composition: loading them (local path, Hub repo id, `"org/name@revision"`), checking they can
read the same images, recording where each comes from, and preparing each one's input."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BaseImageProcessor, ConvNextImageProcessor, PreTrainedConfig, ViTImageProcessor
from transformers.image_utils import load_image

from ..distributed import device_and_dtype
from ..models import ModularResNetForImageClassification, load_module
from ..models.processing import IMAGENET_CROP_PCT
from ..module import REPORT_NAME, parent_name


def composed_image_processor(config: PreTrainedConfig) -> BaseImageProcessor:
    """Resize (and centre-crop for ImageNet-style modules) to a `ComposedConfig`'s input size and scale to [0, 1];
    normalising is each module's own business."""
    if config.crop_pct < 1.0:
        return ConvNextImageProcessor(
            size={"shortest_edge": config.image_size}, crop_pct=config.crop_pct, do_normalize=False
        )
    return ViTImageProcessor(size={"height": config.image_size, "width": config.image_size}, do_normalize=False)


def input_key(module: ModularResNetForImageClassification) -> tuple:
    """Modules with equal keys take identical inputs (the fields `image_processor_for` and `prepare_input` read, and
    where the module runs)."""
    config = module.config
    normalisation = (tuple(config.image_mean), tuple(config.image_std))
    return (config.num_channels, config.image_size, config.stem_type, *normalisation, *device_and_dtype(module))


def prepare_inputs(
    pixel_values: torch.Tensor, modules: Sequence[ModularResNetForImageClassification]
) -> list[torch.Tensor]:
    """[0, 1] images -> each module's input (`prepare_input`), computed once per distinct `input_key`."""
    prepared: dict[tuple, torch.Tensor] = {}
    for module in modules:
        key = input_key(module)
        if key not in prepared:
            prepared[key] = prepare_input(pixel_values, module)
    return [prepared[input_key(module)] for module in modules]


def prepare_input(pixel_values: torch.Tensor, module: ModularResNetForImageClassification) -> torch.Tensor:
    """[0, 1] images -> the module's size and normalisation, on its device and in its dtype (prepared in float32 or
    wider, so a bfloat16 module is not given a bfloat16 resize)."""
    config = module.config
    device, dtype = device_and_dtype(module)
    pixel_values = pixel_values.to(device=device, dtype=torch.promote_types(pixel_values.dtype, torch.float32))
    if pixel_values.dim() != 4 or pixel_values.shape[1] not in (1, 3, config.num_channels):
        raise ValueError(
            f"The pixel values are {tuple(pixel_values.shape)}, but a composition takes (batch, 3, height, width) "
            f"images in [0, 1] (grey ones as (batch, 1, height, width); {config.num_channels} channels for this "
            "module): prepare them with the composition's image processor, or call composed.predict on the images."
        )
    if pixel_values.shape[1] != config.num_channels:
        if config.num_channels == 1:  # RGB into a grey model: luminance, as PIL's "L" conversion computes it
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=pixel_values.dtype, device=pixel_values.device)
            pixel_values = (pixel_values * weights[None, :, None, None]).sum(1, keepdim=True)
        else:
            pixel_values = pixel_values.expand(-1, config.num_channels, -1, -1)
    if pixel_values.shape[-1] != config.image_size or pixel_values.shape[-2] != config.image_size:
        size = (config.image_size, config.image_size)
        pixel_values = F.interpolate(pixel_values, size=size, mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(config.image_mean, dtype=pixel_values.dtype, device=pixel_values.device)[None, :, None, None]
    std = torch.tensor(config.image_std, dtype=pixel_values.dtype, device=pixel_values.device)[None, :, None, None]
    return ((pixel_values - mean) / std).to(dtype)


def expand_decompositions(modules: Iterable[Any]) -> list[Any]:
    """Each local decomposition output in `modules` (a folder with `decomposition.json` beside its `*-module`
    folders) as its modules' folders, in the parent's class order; everything else as it is."""
    expanded: list[Any] = []
    for module in modules:
        report = Path(module) / REPORT_NAME if isinstance(module, (str, os.PathLike)) else None
        if report is None or not report.is_file() or (report.parent / "config.json").is_file():
            expanded.append(module)
            continue
        entries = json.loads(report.read_text()).get("modules") or {}
        expanded.extend(str(report.parent / entry["directory"]) for entry in entries.values())
    return expanded


def load_member(module: Any, **load_kwargs: Any) -> ModularResNetForImageClassification:
    if isinstance(module, ModularResNetForImageClassification):
        if not module.config.is_module:
            raise ValueError("A plain classifier is not a class module; decompose it first (hf_modular.decompose).")
        return module
    return load_module(module, **load_kwargs)  # "org/name@revision" pins a revision


def member_label(module: ModularResNetForImageClassification) -> str:
    return module.config.provenance.target_label


def member_entry(module: ModularResNetForImageClassification, *, label: str) -> dict[str, Any]:
    """Where a module comes from: its Hub repo and the commit it was loaded at, or its local path."""
    source = module.config.name_or_path or None
    revision = getattr(module, "source_revision", None)
    if source and not Path(source).exists() and revision is None:
        source = None  # a Hub id whose revision is unknown cannot be pinned: store the module itself
    if source and Path(source).exists():
        source = str(Path(source).resolve())
    parent = module.config.provenance.parent  # named by its Hub id, or by its directory's name: never a local path
    return {"label": label, "source": source, "revision": revision, "parent": parent.repo_id or parent_name(parent)}


def check_unique(labels: list[str]) -> None:
    clashes = sorted({label for label in labels if labels.count(label) > 1})
    if clashes:
        raise ValueError(
            f"Several modules claim {clashes}. Give each module its own label (labels=[...] in from_modules, label= "
            "in add, --labels on the command line), or use composed.replace(label, module) to swap one."
        )


def check_compatible(modules: Sequence[ModularResNetForImageClassification]) -> None:
    """Modules must read the same images (every member went through `load_member`, which admits modules only)."""
    channels = {module.config.num_channels for module in modules}
    if len(channels) > 1:
        raise ValueError(
            f"The modules take different numbers of input channels ({sorted(channels)}): they cannot read the same "
            "images. Compose modules of parents with the same input type."
        )


def input_fields(modules: Sequence[ModularResNetForImageClassification]) -> dict[str, Any]:
    """The composed input: the largest module size, centre-cropped when any module is an ImageNet-style model."""
    return {
        "image_size": max(module.config.image_size for module in modules),
        "num_channels": modules[0].config.num_channels,
        "crop_pct": IMAGENET_CROP_PCT if any(module.config.stem_type == "imagenet" for module in modules) else 1.0,
    }


RawImages = Image.Image | str | os.PathLike | torch.Tensor | np.ndarray | Sequence[Image.Image | str | os.PathLike]


def as_pil_list(images: RawImages) -> list[Image.Image]:
    """PIL images from what `predict` takes: PIL images; image files (a path or URL, read as transformers' pipelines
    read them); uint8 arrays or tensors, (H, W), (H, W, C) or (C, H, W), or a batch of them; or a list of these."""
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, (str, os.PathLike)):
        source = os.fspath(images)
        if os.path.isdir(source):
            raise IsADirectoryError(f"{source} is a folder: give its image files (a list of paths).")
        if not source.startswith(("http://", "https://")) and not os.path.isfile(source):
            raise FileNotFoundError(f"No such image file: {source}.")
        try:
            return [load_image(source)]
        except (OSError, ValueError) as error:
            raise ValueError(f"Cannot read the image {source!r}: {error}") from error
    if isinstance(images, (torch.Tensor, np.ndarray)):
        array = images.cpu().numpy() if isinstance(images, torch.Tensor) else images
        if array.ndim == 2:  # one grey image, (H, W)
            array = array[None, :, :, None]
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4:
            raise ValueError(f"An image array has 2 or 3 dimensions (a batch of them 4), not {array.ndim}.")
        if array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):  # (B, C, H, W) -> (B, H, W, C)
            array = array.transpose(0, 2, 3, 1)
        if array.dtype != np.uint8:
            raise ValueError(
                f"Raw image arrays must be uint8 (0-255), not {array.dtype}: pass PIL images, files or uint8 data. "
                "For pixel values already preprocessed, call the composition itself: composed(pixel_values=...)."
            )
        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in array]
    accepted = "PIL images, image files (paths or URLs), or uint8 arrays or tensors"
    if not isinstance(images, Sequence):
        raise TypeError(f"Cannot read images from a {type(images).__name__}: pass {accepted}, or a list of them.")
    if len(images) == 0:
        raise ValueError("No images were given: pass at least one.")
    pictures = []
    for image in images:
        if not isinstance(image, (Image.Image, str, os.PathLike, torch.Tensor, np.ndarray)):  # a list of lists
            raise TypeError(
                f"Cannot read an image from a {type(image).__name__} in the list: its items are {accepted}."
            )
        pictures += as_pil_list(image)
    return pictures


def load_pinned(source: str, revision: str | None, label: str, hub_kwargs: dict[str, Any]):
    try:
        return load_module(source, revision=revision, **hub_kwargs)
    except Exception as error:
        at = f" at revision {revision}" if revision else ""
        raise OSError(
            f"The {label!r} module of this composition ({source}{at}) could not be loaded: {error}. If that "
            "revision is gone, replace the module (composed.replace) and save the composition again."
        ) from error


def confined_subfolder(source: str, subfolder: str) -> str:
    """`subfolder` if it names a place inside the composition `source` (a local directory or a Hub repo): relative,
    no `..`, and for a local directory, inside it once symlinks are resolved. A crafted config must not make a
    composition read files from elsewhere on this machine."""
    parts = Path(subfolder).parts
    if not subfolder or Path(subfolder).is_absolute() or ".." in parts or "\\" in subfolder:
        raise ValueError(
            f"A member's subfolder {subfolder!r} points outside the composition: members are stored inside it "
            "(a relative path without '..') or named by Hub repo id. This config was edited or crafted; do not load it."
        )
    if Path(source).is_dir():
        root, target = Path(source).resolve(), (Path(source) / subfolder).resolve()
        if not target.is_relative_to(root):
            raise ValueError(
                f"A member's subfolder {subfolder!r} leads outside the composition's directory ({target}) through a "
                "symbolic link. Store the module inside the composition (save with materialize=True)."
            )
    return subfolder


def confined_source(source: str, composition: str) -> str:
    """A member named by `source` in the config of `composition`: a composition that is not a local directory (a Hub
    repo) may only name Hub repos, never a path on this machine."""
    local = Path(source).is_absolute() or source.startswith((".", "~")) or Path(source).exists()
    if local and not Path(composition).is_dir():
        raise ValueError(
            f"This composition ({composition}) names a member by a local path ({source!r}). A downloaded "
            "composition may only name Hub repos, so it is refused; ask its author to push it with its modules."
        )
    return source


def local_member_entry(entry: dict[str, Any], composition: str | os.PathLike) -> dict[str, Any]:
    """A local member's entry as a composition saved in `composition` records it: `source`, its path relative to that
    directory (`./` or `../` first, so it never reads as a Hub repo id), which survives moving a folder that holds
    both; and `absolute_path`, which survives moving the composition alone."""
    target = Path(entry["source"]).resolve()
    try:
        relative = Path(os.path.relpath(target, Path(composition).resolve())).as_posix()
    except ValueError:  # another drive (Windows): only the absolute path reaches it
        return {**entry, "source": str(target)}
    relative = relative if relative.startswith("../") else f"./{relative}"
    return {**entry, "source": relative, "absolute_path": str(target)}


def locate_members(entries: list[dict[str, Any]], composition: str) -> None:
    """Point each member entry's `source` at where its module is now: a Hub repo id as it is; a local path relative
    to the composition's directory, else its `absolute_path`, whichever exists. Raise one error naming every local
    module found at none of its places."""
    missing = []
    for entry in entries:
        source = entry["source"]
        relative = source.startswith(("./", "../"))
        if not relative and not Path(source).is_absolute():
            continue  # a Hub repo id
        places = [(Path(composition) / source).resolve()] if relative else [Path(source)]
        places += [Path(entry["absolute_path"])] if entry.get("absolute_path") else []
        found = next((place for place in places if place.exists()), None)
        if found is None:
            missing.append(f"{entry['label']!r} (at {' or '.join(map(str, dict.fromkeys(places)))})")
            continue
        entry["source"] = str(found)  # where it is from here, should the composition be saved elsewhere
        entry.pop("absolute_path", None)
    if missing:
        raise FileNotFoundError(
            f"Modules of this composition are in none of the places it recorded: {'; '.join(missing)}. Put them back, "
            "or change each one's \"source\" in the composition's config.json to where it is now (a path relative to "
            "the composition's folder, or an absolute one). (Saved with materialize=True, a composition keeps its "
            "modules inside and does not depend on their paths.)"
        )


def load_from_subfolder(source: str, subfolder: str, revision: str | None, hub_kwargs: dict[str, Any]):
    subfolder = confined_subfolder(source, subfolder)
    if Path(source).is_dir():
        local_kwargs = {key: value for key, value in hub_kwargs.items() if key in ("dtype", "device_map")}
        return load_module(str(Path(source) / subfolder), **local_kwargs)
    return load_module(source, subfolder=subfolder, revision=revision, **hub_kwargs)
