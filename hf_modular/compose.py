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

import datasets
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

from .execution import ExecutionPlan, cached, plan_key
from .modeling_modular_resnet import ModularResNetForImageClassification
from .processing import image_mode, image_processor_for

MODULES_FOLDER = "modules"
RULES = ("vote", "calibrated")


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
        rule (`str`, defaults to `"vote"`):
            How the modules' answers become one: `"vote"`, the paper's rule over own-class probabilities, or
            `"calibrated"`, plain argmax over each module's calibrated own-class probability (see
            [`ComposedModel.calibrate`]).
        calibration (`dict[str, list[float]]`, *optional*):
            Per label, the `[scale, bias]` that maps the module's margin (own logit minus rest logit) to the log-odds
            of its class on the calibration data.
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
    rule: str = "vote"
    calibration: dict[str, list[float]] | None = None

    def validate_rule(self):
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}.")


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
        self._plan_cache: dict[str, Any] = {}
        self.post_init()
        for module in members:  # attached after post_init: trained weights are never re-initialised
            self.members.append(module.eval())
        self.eval()  # a composition is for inference (and shared execution runs in eval mode); .train() to opt out

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
        self._forget_calibration(label)
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
        self._forget_calibration(label)
        self._sync_config()

    def _index(self, label: str) -> int:
        if label not in self.labels:
            raise KeyError(f"No module answers {label!r}; the composition's labels are {self.labels}.")
        return self.labels.index(label)

    def _forget_calibration(self, label: str) -> None:
        """A new module's scale is unknown; the others' fits stay valid (each is fitted on its own margin)."""
        if self.config.calibration:
            self.config.calibration = {k: v for k, v in self.config.calibration.items() if k != label}

    def _sync_config(self) -> None:
        self.config.id2label = dict(enumerate(self.labels))
        self.config.label2id = {label: index for index, label in enumerate(self.labels)}
        for key, value in _input_fields(list(self.members)).items():
            setattr(self.config, key, value)

    # -- running ----------------------------------------------------------------------------------------------------

    def module_logits(self, pixel_values: torch.Tensor, *, shared: bool = True) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, M, 2) logits, each module seeing its own size and normalisation.

        Modules of one parent share the parent's trunk, which then runs once per batch (`hf_modular.execution`);
        `shared=False` runs every module alone, with the same result.
        """
        prepared: dict[str, torch.Tensor] = {}
        inputs = []
        for module in self.members:
            key = _input_key(module)
            if key not in prepared:
                prepared[key] = _prepare(pixel_values, module)
            inputs.append(prepared[key])
        return self._run_members(inputs, shared)

    @property
    def execution_plan(self) -> ExecutionPlan:
        """How the members run together (rebuilt whenever a member or its weights change): which steps they share,
        and `rerun_fraction`, the share of the last batch's (image, module) pairs a mask made run alone."""
        members = list(self.members)

        def build() -> ExecutionPlan:
            return ExecutionPlan(members, [_input_key(member) for member in members])

        return cached(build, plan_key(members), self._plan_cache)

    def _run_members(self, inputs: list[torch.Tensor], shared: bool) -> torch.Tensor:
        """Module i's logits on `inputs[i]`, (B, M, 2)."""
        if shared and not self.training:
            return self.execution_plan(inputs)
        return torch.stack([module(x).logits for module, x in zip(self.members, inputs, strict=True)], dim=1)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None, **kwargs
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images scaled to [0, 1], as the composed model's image processor returns them.
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Indices into the composition's labels; when given, the output carries the negative log-likelihood of the
            normalised own-class probabilities.

        Returns logits (B, M): `scores` of the module logits, whose argmax is the composition's answer.
        """
        logits = self.scores(self.module_logits(pixel_values))
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
        scores = self.scores(self.predict_logits(images))
        if top == 1:
            return [self.labels[i] for i in scores.argmax(dim=1).tolist()]
        return [[self.labels[i] for i in row] for row in scores.topk(min(top, scores.shape[1]), dim=1).indices.tolist()]

    def scores(self, module_logits: torch.Tensor) -> torch.Tensor:
        """(B, M, 2) module logits -> (B, M) log-scores whose argmax follows the composition's `rule`: the log of each
        own-class probability (the paper's vote always picks their argmax), or of its calibrated probability."""
        if self.config.rule == "vote":
            return own_class_probabilities(module_logits).clamp_min(1e-12).log()
        missing = [label for label in self.labels if label not in (self.config.calibration or {})]
        if missing:
            raise ValueError(
                f"rule='calibrated' but the modules for {missing} have no calibration (added or replaced since the "
                "last one). Run composed.calibrate(dataset) again, or set composed.config.rule = 'vote'."
            )
        scale, bias = torch.tensor([self.config.calibration[label] for label in self.labels]).to(module_logits).T
        return F.logsigmoid(scale * (module_logits[..., 0] - module_logits[..., 1]) + bias)

    @torch.inference_mode()
    def calibrate(
        self, dataset: datasets.Dataset, *, max_images: int | None = 5000, batch_size: int = 256, progress: bool = True
    ) -> dict[str, list[float]]:
        """Fit each module's own-class probability to labelled images and switch to `rule="calibrated"`.

        Modules from different parents (or trained with different class balances) are confident to different
        degrees, so their raw probabilities are not comparable. Platt scaling fits, per module, a scale and bias on
        its margin (own logit minus rest logit) so that `sigmoid(scale * margin + bias)` is the frequency of its class
        among `dataset`'s images of the composition's classes (at most `max_images`, a seeded random sample; use
        held-out images, not the test split you report). Returns and stores `{label: [scale, bias]}`.
        """
        from .evaluation import collect_module_logits

        module_logits, labels = collect_module_logits(
            self, dataset, max_images=max_images, batch_size=batch_size, progress=progress
        )
        margins = module_logits[..., 0] - module_logits[..., 1]  # (N, M)
        targets = (labels[:, None] == torch.arange(len(self.labels))[None, :]).float()
        with torch.inference_mode(False), torch.enable_grad():
            margins, targets = margins.clone(), targets.clone()
            parameters = torch.tensor([[1.0, 0.0]] * len(self.labels), requires_grad=True)
            optimizer = torch.optim.LBFGS([parameters], max_iter=200, line_search_fn="strong_wolfe")

            def loss() -> torch.Tensor:
                optimizer.zero_grad()
                logits = parameters[:, 0] * margins + parameters[:, 1]
                value = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(margins)
                value.backward()
                return value

            optimizer.step(loss)
        calibration = {
            label: [float(a), float(b)] for label, (a, b) in zip(self.labels, parameters.tolist(), strict=True)
        }
        self.config.calibration = calibration
        self.config.rule = "calibrated"
        return calibration

    @torch.inference_mode()
    def predict_logits(
        self, images: Sequence[Image.Image] | torch.Tensor | np.ndarray, *, shared: bool = True
    ) -> torch.Tensor:
        """(B, M, 2) module logits for raw images; modules with the same preprocessing share one processor call."""
        pictures = _as_pil_list(images)
        prepared: dict[tuple, torch.Tensor] = {}
        inputs = []
        for module in self.members:
            key = _input_key(module)
            if key not in prepared:
                mode = image_mode(module.config.num_channels)
                processor = image_processor_for(module.config)
                prepared[key] = processor([p.convert(mode) for p in pictures], return_tensors="pt")["pixel_values"]
            inputs.append(prepared[key])
        return self.eval()._run_members(inputs, shared)

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
        from .cards import module_card
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
                    module_card(module.config).save(Path(staging) / subfolder / "README.md")  # its origin travels too
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


def _input_key(module: ModularResNetForImageClassification) -> tuple:
    """Modules with equal keys take identical inputs (the fields `image_processor_for` and `_prepare` read)."""
    config = module.config
    return (config.num_channels, config.image_size, config.stem_type, tuple(config.image_mean), tuple(config.image_std))


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
