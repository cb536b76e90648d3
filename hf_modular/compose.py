"""Composition of class modules into a classifier: the paper's vote, and `ComposedModel`.

    composed = ComposedModel.from_modules(["org/cat-module", "other-org/dog-module@<sha>", local_module])
    composed.predict(images)             # ["cat", "dog", ...]: each module preprocesses the raw images itself
    composed.replace("cat", better_cat)  # swap one class's module

A composed model takes images scaled to [0, 1] (its own image processor only resizes and rescales); every module
then resizes them to its own input size and normalises them with its own mean and std, so modules from parents with
different preprocessing compose correctly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from PIL import Image
from torch import nn
from transformers import (
    BaseImageProcessor,
    ConvNextImageProcessor,
    PreTrainedConfig,
    PreTrainedModel,
    ViTImageProcessor,
)
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from .modeling_modular_resnet import ModularResNetForImageClassification
from .processing import image_mode, image_processor_for

MODULES_FOLDER = "modules"


def own_class_probabilities(module_logits: torch.Tensor) -> torch.Tensor:
    """(B, M, 2) logits of M binary modules (own class first) -> (B, M) probability of each module's own class."""
    return module_logits.softmax(dim=-1)[..., 0]


def vote(module_logits: torch.Tensor) -> torch.Tensor:
    """The paper's rule over (B, M, 2) module logits -> (B,) index of the winning module.

    If exactly one module decides "own class" (its own logit beats its rest logit), it wins. If none or several do,
    the module with the highest own-class probability wins. (A claim is an own-class probability above 0.5, so the
    single claimant also has the highest probability: the rule always agrees with the argmax. It is spelled out
    because that is how the paper states it, and a calibrated variant may not share the property.)
    """
    probabilities = own_class_probabilities(module_logits)
    claims = module_logits[..., 0] > module_logits[..., 1]
    single = claims.sum(dim=1) == 1
    return torch.where(single, claims.float().argmax(dim=1), probabilities.argmax(dim=1))


def top_k(module_logits: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(B, M, 2) -> (B, min(k, M)): the modules with the highest own-class probabilities, best first."""
    probabilities = own_class_probabilities(module_logits)
    return probabilities.topk(min(k, probabilities.shape[1]), dim=1).indices


@strict
class ComposedConfig(PreTrainedConfig):
    r"""
    Configuration of a [`ComposedModel`].

    Args:
        members (`list[dict]`):
            One entry per module, in output order: `label`, and where the module comes from: `source` (a Hub repo
            id or a local path) with `revision` (a commit sha, pinned when saved), or `subfolder` (a module stored
            inside the composed model's own directory or repo, `materialize=True`).
        image_size (`int`), num_channels (`int`), crop_pct (`float`):
            The input the composed model's processor produces: resized to `image_size` (shorter side to
            `image_size / crop_pct` and centre-cropped when `crop_pct < 1`, as ImageNet models expect), scaled to
            [0, 1]. Each module then resizes it to its own size when that differs, and normalises it.
    """

    model_type = "modular_composed"

    members: list[dict[str, Any]] | None = None
    image_size: int = 32
    num_channels: int = 3
    crop_pct: float = 1.0


class ComposedModel(PreTrainedModel):
    """A classifier whose classes are answered by class modules.

    `forward(pixel_values)` takes (B, C, H, W) images in [0, 1] and returns logits (B, M): the log of each module's
    own-class probability, so argmax and softmax follow the paper's vote.
    """

    config_class = ComposedConfig
    config: ComposedConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    base_model_prefix = "composed"

    def __init__(self, config: ComposedConfig, members: Sequence[ModularResNetForImageClassification] = ()):
        super().__init__(config)
        self.members = nn.ModuleList()
        self.post_init()
        for module in members:  # attached after post_init: trained weights are never re-initialised
            self.members.append(module.eval())

    def _init_weights(self, module: nn.Module) -> None:
        """Nothing to initialise: every weight belongs to a trained module."""

    # -- building ---------------------------------------------------------------------------------------------------

    @classmethod
    def from_modules(
        cls,
        modules: Iterable[ModularResNetForImageClassification | str | os.PathLike],
        *,
        rename: dict[str, str] | None = None,
        **load_kwargs: Any,
    ) -> ComposedModel:
        """Compose modules given as objects, local paths or Hub repo ids (`"org/name@revision"` pins a revision).

        Two modules may not claim the same label; `rename={"old": "new"}` renames a module's class, or use
        `replace` to swap one.
        """
        loaded = [_load_member(module, **load_kwargs) for module in modules]
        if not loaded:
            raise ValueError("A composition needs at least one module.")
        entries = [_entry(module, label=(rename or {}).get(_label(module), _label(module))) for module in loaded]
        _check_unique([entry["label"] for entry in entries])
        _check_compatible(loaded)
        labels = [entry["label"] for entry in entries]
        config = ComposedConfig(
            members=entries,
            id2label=dict(enumerate(labels)),
            label2id={label: index for index, label in enumerate(labels)},
            **_input_fields(loaded),
        )
        return cls(config, loaded)

    @property
    def labels(self) -> list[str]:
        return [entry["label"] for entry in self.config.members]

    def replace(self, label: str, module: ModularResNetForImageClassification | str, **load_kwargs: Any) -> None:
        """Swap the module answering `label` for another (e.g. the same class's module from a better parent)."""
        index = self._index(label)
        new = _load_member(module, **load_kwargs)
        _check_compatible([*self.members[:index], new, *self.members[index + 1 :]])
        self.members[index] = new.eval()
        self.config.members[index] = _entry(new, label=label)
        self._sync_config()

    def add(
        self, module: ModularResNetForImageClassification | str, *, label: str | None = None, **load_kwargs: Any
    ) -> None:
        """Add a module for a new class (its own class name unless `label` is given)."""
        new = _load_member(module, **load_kwargs)
        label = label or _label(new)
        _check_unique([*self.labels, label])
        _check_compatible([*self.members, new])
        self.members.append(new.eval())
        self.config.members.append(_entry(new, label=label))
        self._sync_config()

    def remove(self, label: str) -> None:
        """Drop the module answering `label`."""
        index = self._index(label)
        if len(self.members) == 1:
            raise ValueError("Cannot remove the last module: a composition needs at least one.")
        del self.members[index]
        del self.config.members[index]
        self._sync_config()

    def _index(self, label: str) -> int:
        if label not in self.labels:
            raise KeyError(f"No module answers {label!r}; the composition's labels are {self.labels}.")
        return self.labels.index(label)

    def _sync_config(self) -> None:
        self.config.id2label = dict(enumerate(self.labels))
        self.config.label2id = {label: index for index, label in enumerate(self.labels)}
        for key, value in _input_fields(list(self.members)).items():
            setattr(self.config, key, value)

    # -- running ----------------------------------------------------------------------------------------------------

    def module_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, M, 2) logits, each module seeing its own size and normalisation."""
        outputs = []
        for module in self.members:
            outputs.append(module(_prepare(pixel_values, module)).logits)
        return torch.stack(outputs, dim=1)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None, **kwargs
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images scaled to [0, 1], as the composed model's image processor returns them.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Indices into the composition's labels; when given, the output carries the negative log-likelihood of the
            normalised own-class probabilities.
        """
        logits = own_class_probabilities(self.module_logits(pixel_values)).clamp_min(1e-12).log()
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        output = ImageClassifierOutputWithNoAttention(loss=loss, logits=logits)
        return output if return_dict is not False else output.to_tuple()

    @torch.inference_mode()
    def predict(
        self, images: Sequence[Image.Image] | torch.Tensor | np.ndarray, *, top: int = 1
    ) -> list[str] | list[list[str]]:
        """Labels for raw images (PIL images, or uint8 arrays/tensors): each module applies its own image processor.

        With `top > 1`, a list of the `top` best labels per image (the paper's top-k).
        """
        module_logits = self.predict_logits(images)
        if top == 1:
            winners = vote(module_logits)
            return [self.labels[i] for i in winners.tolist()]
        return [[self.labels[i] for i in row] for row in top_k(module_logits, top).tolist()]

    @torch.inference_mode()
    def predict_logits(self, images: Sequence[Image.Image] | torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, M, 2) module logits for raw images; modules with the same preprocessing share one processor call."""
        pictures = _as_pil_list(images)
        prepared: dict[str, torch.Tensor] = {}
        outputs = []
        for module in self.members:
            processor = image_processor_for(module.config)
            key = processor.to_json_string()
            if key not in prepared:
                mode = image_mode(module.config.num_channels)
                inputs = [picture.convert(mode) for picture in pictures]
                prepared[key] = processor(inputs, return_tensors="pt")["pixel_values"]
            outputs.append(module.eval()(prepared[key]).logits)
        return torch.stack(outputs, dim=1)

    # -- saving and loading -----------------------------------------------------------------------------------------

    def save_pretrained(
        self, save_directory: str | os.PathLike, *, materialize: bool = False, portable: bool = False, **kwargs: Any
    ) -> None:
        """Write `config.json` (the modules by repo id and pinned revision, or by local path) and the processor.

        With `materialize=True` every module is stored in `modules/<label>/` inside the directory, so the composed
        model loads offline and without the original repos. Modules with no source to point at (built in memory, or
        loaded from another composition's folder) are always stored inside; with `portable=True` (for a Hub repo)
        so are modules known only by a local path.
        """
        from .decompose.output import module_directory_name
        from .saving import atomic_directory

        if not kwargs.get("is_main_process", True):
            return
        from .decompose.output import check_directory_names

        check_directory_names(self.labels)
        config = ComposedConfig.from_dict(self.config.to_dict())
        with atomic_directory(save_directory) as staging:
            for index, module in enumerate(self.members):
                entry = dict(config.members[index])
                source = entry.get("source")
                local = bool(source) and Path(source).exists()
                if materialize or not source or (portable and local):
                    subfolder = f"{MODULES_FOLDER}/{module_directory_name(entry['label'])}"
                    module.save_pretrained(Path(staging) / subfolder)
                    entry = {"label": entry["label"], "subfolder": subfolder}
                config.members[index] = entry
            config.save_pretrained(staging)
            composed_image_processor(config).save_pretrained(staging)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        materialize: bool = False,
        evaluation: dict[str, Any] | None = None,
        private: bool | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        create_pr: bool = False,
        commit_message: str | None = None,
        license: str | None = None,
    ):
        """Publish the composition in one commit: its config (Hub modules by repo id and pinned revision; local or
        in-memory modules stored inside), processor and a card with the module table (and `evaluation`, a dict with
        `dataset`, `split`, `images`, `top1`, `top5`, when given). Returns a `hf_modular.hub.PushResult`."""
        import tempfile

        from .cards import composed_card
        from .hub import upload_folder

        with tempfile.TemporaryDirectory(prefix="hf-modular-push-") as staging:
            self.save_pretrained(staging, materialize=materialize, portable=True)
            saved = ComposedConfig.from_pretrained(staging)
            composed_card(saved, repo_id, evaluation=evaluation, license=license).save(Path(staging) / "README.md")
            return upload_folder(
                staging,
                repo_id,
                what=f"composition of {len(self.labels)} modules",
                private=private,
                revision=revision,
                token=token,
                create_pr=create_pr,
                commit_message=commit_message,
            )

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> ComposedModel:
        """Load a composed model from a directory or Hub repo, fetching each module it names."""
        revision = kwargs.get("revision")
        keys = ("cache_dir", "token", "local_files_only", "force_download")
        hub_kwargs = {key: kwargs[key] for key in keys if key in kwargs}
        source = str(pretrained_model_name_or_path)
        config = ComposedConfig.from_pretrained(source, revision=revision, **hub_kwargs)
        members = []
        for entry in config.members or []:
            if entry.get("subfolder"):
                module = _load_from_subfolder(source, entry["subfolder"], revision, hub_kwargs)
            else:
                module = _load_pinned(entry["source"], entry.get("revision"), entry["label"], hub_kwargs)
            members.append(module)
        return cls(config, members)


def composed_image_processor(config: ComposedConfig) -> BaseImageProcessor:
    """Resize (and centre-crop for ImageNet-style modules) to the composed input size and scale to [0, 1];
    normalising is each module's own business."""
    if config.crop_pct < 1.0:
        return ConvNextImageProcessor(
            size={"shortest_edge": config.image_size}, crop_pct=config.crop_pct, do_normalize=False
        )
    return ViTImageProcessor(size={"height": config.image_size, "width": config.image_size}, do_normalize=False)


def _prepare(pixel_values: torch.Tensor, module: ModularResNetForImageClassification) -> torch.Tensor:
    """[0, 1] images -> the module's size and normalisation."""
    config = module.config
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
    return (pixel_values - mean) / std


def _load_member(module: Any, **load_kwargs: Any) -> ModularResNetForImageClassification:
    from . import load_module

    if isinstance(module, ModularResNetForImageClassification):
        if not module.config.is_module:
            raise ValueError("A plain classifier is not a class module; decompose it first (hf_modular.decompose).")
        return module
    source, revision = str(module), None
    if not Path(source).exists() and "@" in source:  # "org/name@revision"; a local path may contain '@' itself
        source, _, revision = source.partition("@")
    if revision:
        load_kwargs = {**load_kwargs, "revision": revision}
    return load_module(source, **load_kwargs)


def _label(module: ModularResNetForImageClassification) -> str:
    return module.config.module["target_label"]


def _entry(module: ModularResNetForImageClassification, *, label: str) -> dict[str, Any]:
    """Where a module comes from: its Hub repo and the commit it was loaded at, or its local path."""
    source = module.config.name_or_path or None
    revision = getattr(module, "source_revision", None)
    if source and not Path(source).exists() and revision is None:
        source = None  # a Hub id whose revision is unknown cannot be pinned: store the module itself
    if source and Path(source).exists():
        source = str(Path(source).resolve())
    return {"label": label, "source": source, "revision": revision}


def _check_unique(labels: list[str]) -> None:
    clashes = sorted({label for label in labels if labels.count(label) > 1})
    if clashes:
        raise ValueError(
            f"Several modules claim {clashes}. Rename one (rename={{'{clashes[0]}': 'new name'}}) or use "
            "composed.replace(label, module) to swap it."
        )


def _check_compatible(modules: Sequence[ModularResNetForImageClassification]) -> None:
    """Modules must read the same images (every member went through `_load_member`, which admits modules only)."""
    channels = {module.config.num_channels for module in modules}
    if len(channels) > 1:
        raise ValueError(
            f"The modules take different numbers of input channels ({sorted(channels)}): they cannot read the same "
            "images. Compose modules of parents with the same input type."
        )


def _input_fields(modules: Sequence[ModularResNetForImageClassification]) -> dict[str, Any]:
    """The composed input: the largest module size, centre-cropped when any module is an ImageNet-style model."""
    return {
        "image_size": max(module.config.image_size for module in modules),
        "num_channels": modules[0].config.num_channels,
        "crop_pct": 0.875 if any(module.config.stem_type == "imagenet" for module in modules) else 1.0,
    }


def _as_pil_list(images: Sequence[Image.Image] | torch.Tensor | np.ndarray) -> list[Image.Image]:
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, (torch.Tensor, np.ndarray)):
        array = images.cpu().numpy() if isinstance(images, torch.Tensor) else images
        if array.ndim == 3:
            array = array[None]
        if array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):  # (B, C, H, W) -> (B, H, W, C)
            array = array.transpose(0, 2, 3, 1)
        if array.dtype != np.uint8:
            raise ValueError("Raw image arrays must be uint8 (0-255); pass PIL images or uint8 data.")
        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in array]
    return list(images)


def _load_pinned(source: str, revision: str | None, label: str, hub_kwargs: dict[str, Any]):
    from . import load_module

    try:
        return load_module(source, revision=revision, **hub_kwargs)
    except Exception as error:
        at = f" at revision {revision}" if revision else ""
        raise OSError(
            f"The {label!r} module of this composition ({source}{at}) could not be loaded: {error}. If that "
            "revision is gone, replace the module (composed.replace) and save the composition again."
        ) from error


def _load_from_subfolder(source: str, subfolder: str, revision: str | None, hub_kwargs: dict[str, Any]):
    from . import load_module

    if Path(source).is_dir():
        return load_module(str(Path(source) / subfolder))
    return load_module(source, subfolder=subfolder, revision=revision, **hub_kwargs)
