"""`ComposedModel`: a classifier whose classes are answered by class modules.

    composed = ComposedModel.from_modules(["org/cat-module", "other-org/dog-module@<sha>", local_module])
    composed.predict(images)             # ["cat", "dog", ...]: each module preprocesses the raw images itself
    composed.replace("cat", better_cat)  # swap one class's module

A composed model takes images scaled to [0, 1] (its own image processor only resizes and rescales); every module
then resizes them to its own input size and normalises them with its own mean and std, so modules from parents with
different preprocessing compose correctly.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention
from typing_extensions import Unpack

from ..console import progress_bar
from ..data import (
    dataset_to_model_labels,
    find_columns,
    iterate_batches,
    label_ids,
    label_names,
    load_image_dataset,
    only_columns,
    pinned_revision,
)
from ..distributed import DistributedState, distributed_state, on_main_process
from ..hub import (
    PushOptions,
    PushResult,
    composed_card,
    module_card,
    refuse_replacing_another_module,
    upload_folder,
)
from ..models import ModularResNetForImageClassification, image_mode, image_processor_for
from ..models.loading import check_hub_model_type, check_local_path, check_saved_model
from ..module import check_directory_names, module_directory_name
from ..saving import atomic_directory
from ..validation import check_number
from .execution import ExecutionPlan, Head, cached, common_dtype, plan_key, run_alone
from .fitting import (
    FINGERPRINT_KEYS,
    fingerprint_record,
    fit_heads,
    fit_platt,
    fitted_heads,
    is_recorded_member,
    stale_members,
)
from .members import (
    RawImages,
    as_pil_list,
    check_compatible,
    check_unique,
    composed_image_processor,
    confined_source,
    confined_subfolder,
    expand_decompositions,
    input_fields,
    input_key,
    load_from_subfolder,
    load_member,
    load_pinned,
    local_member_entry,
    locate_members,
    member_entry,
    member_label,
    prepare_inputs,
)
from .rules import RULES, calibrated_margins, module_margins

MODULES_FOLDER = "modules"

logger = logging.getLogger(__name__)


@strict
class ComposedConfig(PreTrainedConfig):
    r"""
    Configuration of a [`ComposedModel`].

    Args:
        members (`list[dict]`):
            One entry per module, in output order: `label`, `parent` (the Hub id or directory name of the model it
            was decomposed from, for the card), and where the module comes from: `source` (a Hub repo id, or a
            local path: saved relative to the composition's directory, `./` or `../` first, beside its
            `absolute_path` and its weights' `weights_sha256*`, which tell when the module there has changed) with
            `revision` (a commit sha, pinned when saved), or `subfolder` (a module stored inside the composed
            model's own directory or repo, `materialize=True`).
        rule (`str`, defaults to `"vote"`):
            How the modules' answers become one: `"vote"`, the paper's rule over own-class probabilities, or
            `"calibrated"`, plain argmax over each module's calibrated own-class probability (see
            [`ComposedModel.calibrate`]).
        calibration (`dict[str, list[float]]`, *optional*):
            Per label, the `[scale, bias]` that maps the module's margin (own logit minus rest logit) to the log-odds
            of its class on the calibration data.
        fit (`dict`, *optional*):
            What [`ComposedModel.fit`] fitted: per label a refit own-vs-rest head (`heads`), the data it was fitted on
            (`data`: name, split, revision and configuration, fingerprint, images per class, seed, columns) and the
            members it was fitted for (`members`: label and weights sha256 in float32, bfloat16 and float16). The
            members answer with these heads; a member edited since makes the fit stale (one loaded in another
            precision does not), and the composition refuses to answer until it is fitted again.
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
    fit: dict[str, Any] | None = None

    def validate_rule(self):
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}.")


class ComposedModel(PreTrainedModel):
    """A classifier whose classes are answered by class modules.

    `forward(pixel_values)` takes (B, C, H, W) images in [0, 1] and returns logits (B, M): per module, the log of
    its own-class probability, from its own head or its fitted one (`fit`), calibrated under `rule="calibrated"`.
    Their argmax is the composition's answer (with the modules' own heads, the paper's vote). Under
    `config.problem_type = "multi_label_classification"` the logits are the log-odds of those probabilities instead.
    """

    config_class = ComposedConfig
    config: ComposedConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    base_model_prefix = "composed"

    def __init__(self, config: ComposedConfig, members: Sequence[ModularResNetForImageClassification] = ()):
        super().__init__(config)
        # transformers picks `loss_function` by a loss name in the class name, which "ComposedModel" lacks (it would
        # fall back to a causal-LM loss): the image classifiers' loss honours `config.problem_type`.
        self.loss_type = "ForImageClassification"
        self.members = nn.ModuleList()
        # Whether it was loaded from a directory or repo that stores every module inside (saved with
        # materialize=True, or with no module to point at): saving it again stores them all inside by default, a
        # module replaced since included, so that it stays self-contained.
        self.stores_its_modules = False
        self._plan_cache: dict[str, Any] = {}
        self._heads_cache: dict[str, Any] = {}
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
        labels: Sequence[str] | None = None,
        **load_kwargs: Any,
    ) -> ComposedModel:
        """Compose modules given as objects, local paths or Hub repo ids (`"org/name@revision"` pins a revision).
        A decomposition's output folder stands for all its modules, in the parent's class order.

        Two modules may not claim the same label: `rename={"old": "new"}` renames a module's class (every module of
        that class), `labels` gives every module's label in order (two modules of one class can then answer as two
        labels), or use `replace` to swap one.
        """
        loaded = [load_member(module, **load_kwargs) for module in expand_decompositions(modules)]
        if not loaded:
            raise ValueError("A composition needs at least one module.")
        own = [member_label(module) for module in loaded]
        if labels is not None and rename:
            raise ValueError("Give rename= or labels= (--rename or --labels), not both.")
        if labels is not None and len(labels) != len(loaded):
            raise ValueError(
                f"labels= (--labels) names {len(labels)} label(s) for {len(loaded)} modules; give one per module."
            )
        unknown = sorted(set(rename or {}) - set(own))
        if unknown:
            raise ValueError(
                f"rename= (--rename) names {unknown}, which no module answers; the modules' labels are {own}."
            )
        labels = list(labels) if labels is not None else [(rename or {}).get(label, label) for label in own]
        entries = [member_entry(module, label=label) for module, label in zip(loaded, labels, strict=True)]
        check_unique([entry["label"] for entry in entries])
        check_compatible(loaded)
        labels = [entry["label"] for entry in entries]
        config = ComposedConfig(
            members=entries,
            id2label=dict(enumerate(labels)),
            label2id={label: index for index, label in enumerate(labels)},
            **input_fields(loaded),
        )
        return cls(config, loaded)

    @property
    def labels(self) -> list[str]:
        return [entry["label"] for entry in self.config.members]

    def replace(
        self,
        label: str,
        module: ModularResNetForImageClassification | str,
        *,
        relabel: bool = False,
        **load_kwargs: Any,
    ) -> None:
        """Swap the module answering `label` for another of the same class (e.g. from a better parent); with
        `relabel=True`, a module of another class name answers as `label` (the same class, named otherwise)."""
        index = self._index(label)
        new = load_member(module, **load_kwargs)
        same_class = {label, member_label(self.members[index])}  # the slot may have been renamed
        if member_label(new) not in same_class and not relabel:
            raise ValueError(
                f"The new module answers {member_label(new)!r}, not {label!r}: a replacement is a module of the same "
                f"class. If {member_label(new)!r} is {label!r} by another name, pass relabel=True (--relabel)."
            )
        check_compatible([*self.members[:index], new, *self.members[index + 1 :]])
        self.members[index] = new.eval()
        self.config.members[index] = member_entry(new, label=label)
        self._forget_calibration(label)
        self._sync_config()

    def add(
        self, module: ModularResNetForImageClassification | str, *, label: str | None = None, **load_kwargs: Any
    ) -> None:
        """Add a module for a new class (its own class name unless `label` is given)."""
        new = load_member(module, **load_kwargs)
        label = label or member_label(new)
        check_unique([*self.labels, label])
        check_compatible([*self.members, new])
        self.members.append(new.eval())
        self.config.members.append(member_entry(new, label=label))
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
        for key, value in input_fields(list(self.members)).items():
            setattr(self.config, key, value)

    # -- running ----------------------------------------------------------------------------------------------------

    def module_logits(self, pixel_values: torch.Tensor, *, shared: bool = True) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, M, 2) logits, each module seeing its own size and normalisation.

        Modules of one parent share the parent's trunk, which then runs once per batch (`hf_modular.compose.execution`);
        `shared=False` runs every module alone, with the same result.
        """
        return self._run_members(prepare_inputs(pixel_values, list(self.members)), shared)

    @property
    def execution_plan(self) -> ExecutionPlan:
        """How the members run together (rebuilt whenever a member or its weights change): which steps they share,
        and `rerun_fraction`, the share of the last batch's (image, module) pairs a mask made run alone."""
        members = list(self.members)
        heads = self._heads()

        def build() -> ExecutionPlan:
            return ExecutionPlan(members, [input_key(member) for member in members], heads)

        key = (plan_key(members), id(heads), torch.is_inference_mode_enabled())  # inference tensors can't train
        return cached(build, key, self._plan_cache)

    def _run_members(self, inputs: list[torch.Tensor], shared: bool) -> torch.Tensor:
        """Module i's logits on `inputs[i]`, (B, M, 2)."""
        # Shared execution compares weights and branches on which masks fired: eager only. torch.compile and
        # torch.export trace the members run alone, which gives the same answer.
        if shared and not self.training and not _is_compiling():
            return self.execution_plan(inputs)
        heads = self._heads() or [Head.of(module) for module in self.members]
        answers = [run_alone(module, head, x) for module, head, x in zip(self.members, heads, inputs, strict=True)]
        dtype = common_dtype(answers)  # members may differ in device and dtype, as in `ExecutionPlan`
        return torch.stack([answer.to(answers[0].device, dtype) for answer in answers], dim=1)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None, **kwargs
    ) -> ImageClassifierOutputWithNoAttention | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Images scaled to [0, 1], as the composed model's image processor returns them.
        labels (`torch.Tensor`, *optional*):
            When given, the output carries the loss that `config.problem_type` names, as in transformers' image
            classifiers: for `"single_label_classification"` (integer labels, shape `(batch_size,)`, indices into
            the composition's labels) the negative log-likelihood of the normalised own-class probabilities; for
            `"multi_label_classification"` (float labels, shape `(batch_size, num_labels)`) the binary
            cross-entropy of each module's own-class probability; for `"regression"` the mean squared error of the
            logits. Left unset, the problem type is inferred from the labels as transformers does.

        Returns logits (B, M) whose argmax is the composition's answer: `scores` of the module logits (the log of
        each own-class probability), or, for `"multi_label_classification"`, its log-odds, so that a sigmoid of
        them is each module's own-class probability, as transformers' multi-label classifiers are read.
        """
        own_class_log_odds = self.own_class_log_odds(self.module_logits(pixel_values))
        multi_label = _problem_type(self.config, labels) == "multi_label_classification"
        logits = own_class_log_odds if multi_label else F.logsigmoid(own_class_log_odds)
        loss = self.loss_function(labels, logits, self.config, **kwargs) if labels is not None else None
        output = ImageClassifierOutputWithNoAttention(loss=loss, logits=logits)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    @torch.inference_mode()
    def predict(self, images: RawImages, *, top: int = 1) -> list[str] | list[list[str]]:
        """Labels for raw images (PIL images, image files by path or URL, uint8 arrays or tensors, or a list of
        them): each module applies its own image processor.

        With `top > 1`, a list of the `top` best labels per image (the paper's top-k).
        """
        check_number("top", top, minimum=1, integer=True)
        scores = self.scores(self.predict_logits(images))
        if top == 1:
            return [self.labels[i] for i in scores.argmax(dim=1).tolist()]
        return [[self.labels[i] for i in row] for row in scores.topk(min(top, scores.shape[1]), dim=1).indices.tolist()]

    def scores(self, module_logits: torch.Tensor) -> torch.Tensor:
        """(B, M, 2) module logits -> (B, M) log-scores whose argmax follows the composition's `rule`: the log of each
        own-class probability (the paper's vote always picks their argmax), or of its calibrated probability."""
        return F.logsigmoid(self.own_class_log_odds(module_logits))  # finite however confident a module is

    def own_class_log_odds(self, module_logits: torch.Tensor) -> torch.Tensor:
        """(B, M, 2) module logits -> (B, M) log-odds of each own-class probability that `scores` takes the log of:
        each module's margin (own logit minus rest logit), calibrated under `rule="calibrated"`."""
        if self.config.rule == "vote":
            return module_margins(module_logits)
        if self.config.rule != "calibrated":  # a new rule in `RULES` needs its own branch here
            raise NotImplementedError(f"ComposedModel.own_class_log_odds has no branch for rule {self.config.rule!r}.")
        missing = [label for label in self.labels if label not in (self.config.calibration or {})]
        if missing:
            raise ValueError(
                f"rule='calibrated' but the modules for {missing} have no calibration (added or replaced since the "
                "last one). Run composed.calibrate(dataset) again, or set composed.config.rule = 'vote'."
            )
        calibration = torch.tensor([self.config.calibration[label] for label in self.labels])
        return calibrated_margins(module_logits, calibration)

    @torch.inference_mode()
    def calibrate(
        self,
        dataset: datasets.Dataset | str | os.PathLike,
        *,
        split: str = "train",
        max_images: int | None = 5000,
        batch_size: int = 256,
        progress: bool = True,
        image_column: str | None = None,
        label_column: str | None = None,
        dataset_revision: str | None = None,
        dataset_config: str | None = None,
    ) -> dict[str, list[float]]:
        """Fit each module's own-class probability to labelled images and switch to `rule="calibrated"`.

        Modules from different parents (or trained with different class balances) are confident to different
        degrees, so their raw probabilities are not comparable. Platt scaling fits, per module, a scale and bias on
        its margin (own logit minus rest logit) so that `sigmoid(scale * margin + bias)` is the frequency of its class
        among `dataset`'s images of the composition's classes (at most `max_images`, a seeded random sample; use
        held-out images, not the test split you report; its Image and ClassLabel columns, or `image_column` and
        `label_column`). `dataset` is a `datasets.Dataset` or anything `hf_modular.data.load_image_dataset` takes
        (with `split`; a Hub dataset at `dataset_revision`, in its configuration `dataset_config`). Calibration is of
        the modules' own heads: a fitted composition's fit is dropped (fitted heads are calibrated by construction).
        Returns and stores `{label: [scale, bias]}`.
        """
        loaded = load_image_dataset(dataset, split=split, revision=dataset_revision, config_name=dataset_config)
        dataset = only_columns(loaded, image_column, label_column)
        self.config.fit = None
        module_logits, labels = collect_module_logits(
            self, dataset, max_images=max_images, batch_size=batch_size, progress=progress
        )
        # (N, M); the fit is tiny, so it runs on the CPU in float32 whatever the modules' device and dtype.
        margins = module_margins(module_logits).float().cpu()
        targets = (labels[:, None] == torch.arange(len(self.labels))[None, :]).float()
        parameters = fit_platt(margins, targets)
        calibration = {
            label: [float(a), float(b)] for label, (a, b) in zip(self.labels, parameters.tolist(), strict=True)
        }
        self.config.calibration = calibration
        self.config.rule = "calibrated"
        return calibration

    def drop_fit(self) -> None:
        """Forget a fit and a calibration alike: the members answer with their own heads by the paper's vote
        again."""
        self.config.fit, self.config.calibration, self.config.rule = None, None, "vote"

    def fit(
        self,
        dataset: datasets.Dataset | str | os.PathLike,
        *,
        split: str = "train",
        images_per_class: int = 100,
        seed: int = 0,
        l2: float = 1e-3,
        batch_size: int = 256,
        other_classes: str = "refuse",
        state: DistributedState | None = None,
        progress: bool = True,
        image_column: str | None = None,
        label_column: str | None = None,
        dataset_revision: str | None = None,
        dataset_config: str | None = None,
    ) -> dict[str, Any]:
        """Make modules from unrelated parents compose: refit each member's own-vs-rest head on a small labelled
        sample of the composition's classes (`images_per_class` seeded random images of each; every class must be
        there, and no other). The members and their repos are not changed; the composition stores the fitted heads
        (`config.fit`, saved and pushed with it) and answers with them. Use images you do not report results on.
        `dataset` is a `datasets.Dataset` or anything `hf_modular.data.load_image_dataset` takes (with `split`).
        Images of classes no member answers are refused, or skipped with `other_classes="skip"`. The images and
        labels are the dataset's Image and ClassLabel columns, or `image_column` and `label_column`. Under
        `accelerate launch` the processes of `state` share the images; each gets the same fit. A Hub dataset is read
        at `dataset_revision` (default: its main branch) in its configuration `dataset_config`; the record names the
        commit that was read, so that the same fit can be made again.

        Returns the fit record (see `ComposedConfig.fit`).
        """
        source = dataset if isinstance(dataset, (str, os.PathLike)) else None
        revision = on_main_process(lambda: pinned_revision(source, dataset_revision), distributed_state(state))
        loaded = load_image_dataset(dataset, split=split, revision=revision, config_name=dataset_config)
        record = fit_heads(
            list(self.members),
            self.labels,
            self.config,
            only_columns(loaded, image_column, label_column),
            dataset_source=source,
            dataset_revision=revision,
            dataset_config=dataset_config,
            images_per_class=images_per_class,
            seed=seed,
            l2=l2,
            batch_size=batch_size,
            other_classes=other_classes,
            state=state,
            progress=progress,
        )
        self.config.fit = record
        self.config.rule, self.config.calibration = "vote", None  # fitted heads are calibrated by construction
        return record

    def _heads(self) -> list[Head] | None:
        """The heads the members answer with: the fitted ones when the composition was fitted, else their own."""
        fit = self.config.fit
        if not fit:
            return None
        # Hashing the members' weights cannot be traced: torch.compile and torch.export take the members as they
        # are (an eager call first says whether the fit is stale).
        stale = [] if _is_compiling() else stale_members(fit, self.labels, list(self.members))
        if stale:
            raise ValueError(
                f"This composition was fitted for other members than it has now ({', '.join(stale)} changed since), "
                "so its fit is stale. Fit it again (composed.fit(dataset); saved, `hf-modular fit DIR`), or drop the "
                "fit (composed.drop_fit(); `hf-modular fit DIR --drop`) to answer with the members' own heads."
            )
        reference = [member.fc.weight for member in self.members]
        key = tuple(
            (id(member), weight.device, weight.dtype) for member, weight in zip(self.members, reference, strict=True)
        )
        key += (torch.is_inference_mode_enabled(),)
        cache = self._heads_cache
        if cache.get("fit") is not fit or cache.get("key") != key:  # the fit itself, not its id: ids are reused
            self._heads_cache = {"fit": fit, "key": key, "heads": fitted_heads(fit, self.labels, reference)}
        return self._heads_cache["heads"]

    @torch.inference_mode()
    def predict_logits(self, images: RawImages, *, shared: bool = True) -> torch.Tensor:
        """(B, M, 2) module logits for raw images; modules with the same preprocessing share one processor call."""
        pictures = as_pil_list(images)
        prepared: dict[tuple, torch.Tensor] = {}
        inputs = []
        for module in self.members:
            key = input_key(module)
            if key not in prepared:
                mode = image_mode(module.config.num_channels)
                processor = image_processor_for(module.config)
                pixel_values = processor([p.convert(mode) for p in pictures], return_tensors="pt")["pixel_values"]
                parameter = next(module.parameters())  # inputs follow the member's device and dtype
                prepared[key] = pixel_values.to(parameter.device, parameter.dtype)
            inputs.append(prepared[key])
        return self.eval()._run_members(inputs, shared)

    # -- saving and loading -----------------------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        materialize: bool | None = None,
        portable: bool = False,
        **kwargs: Any,
    ) -> None:
        """Write `config.json` (the modules by repo id and pinned revision, or by local path relative to
        `save_directory`, so that moving a folder that holds both keeps the composition whole) and the processor.

        With `materialize=True` every module is stored in `modules/<label>/` inside the directory, so the composed
        model loads offline and without the original repos. The default, None, is True for a composition loaded
        from a directory or repo that stores every module inside (`stores_its_modules`: it stays self-contained, a
        module replaced since included), else False. Modules with no source to point at (built in memory, or loaded from
        another composition's folder) are always stored inside; with `portable=True` (for a Hub repo) so are
        modules known only by a local path.
        """
        if not kwargs.get("is_main_process", True):
            return
        materialize = self.stores_its_modules if materialize is None else materialize
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
                    # The parent stays on record (an older record may have none): the card names it.
                    parent = {"parent": entry["parent"]} if entry.get("parent") else {}
                    entry = {"label": entry["label"], "subfolder": subfolder, **parent}
                elif local:  # by path, and by its weights, to tell when the module there is changed
                    entry = {**local_member_entry(entry, save_directory), **fingerprint_record(module)}
                config.members[index] = entry
            config.save_pretrained(staging)
            composed_image_processor(config).save_pretrained(staging)
            composed_card(config).save(Path(staging) / "README.md")  # a local composition has its card too

    def push_to_hub(
        self,
        repo_id: str,
        *,
        materialize: bool | None = None,
        evaluation: dict[str, Any] | None = None,
        **options: Unpack[PushOptions],
    ) -> PushResult:
        """Publish the composition in one commit: its config (Hub modules by repo id and pinned revision; local or
        in-memory modules stored inside; `materialize` as for `save_pretrained`), processor and a card with the
        module table (and `evaluation`, a dict with `dataset`, `split`, `images`, `top1`, `top5`, when given).
        `options`: see `hf_modular.hub.PushOptions`. Returns a `hf_modular.hub.PushResult`."""
        if not options.pop("overwrite", False):  # a module's repo is not taken over by a composition
            refuse_replacing_another_module(repo_id, None, **options)
        with tempfile.TemporaryDirectory(prefix="hf-modular-push-") as staging:
            self.save_pretrained(staging, materialize=materialize, portable=True)
            saved = ComposedConfig.from_pretrained(staging)
            card = composed_card(saved, repo_id, evaluation=evaluation, license=options.pop("license", None))
            card.save(Path(staging) / "README.md")
            return upload_folder(staging, repo_id, what=f"composition of {len(self.labels)} modules", **options)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> ComposedModel:
        """Load a composed model from a directory or Hub repo (its `subfolder`, if given), fetching each module it
        names; `dtype` and `device_map` apply to every member, as transformers applies them to a model."""
        # transformers would give a model a new head; a composition's classes are its members'. (The Auto classes
        # pass the labels asked for inside `config`.)
        relabel = sorted(key for key in ("num_labels", "id2label", "label2id") if key in kwargs)
        given = kwargs.get("config")
        revision, subfolder = kwargs.get("revision"), kwargs.get("subfolder") or ""
        keys = ("cache_dir", "token", "local_files_only", "force_download")
        hub_kwargs = {key: kwargs[key] for key in keys if key in kwargs}
        member_kwargs = {**hub_kwargs, **{key: kwargs[key] for key in ("dtype", "device_map") if key in kwargs}}
        source = str(pretrained_model_name_or_path)
        if subfolder and Path(source).is_dir():  # a local directory: the composition is in its subfolder
            source, subfolder = str(Path(source) / subfolder), ""
        check_saved_model(source, expected=ComposedConfig.model_type)  # a local path: is it a composed model?
        if not Path(source).exists():  # a Hub repo: the same question, asked of its config.json
            check_local_path(source)  # unless it can be no repo id
            check_hub_model_type(source, ComposedConfig.model_type, {**hub_kwargs, **kwargs})
        config = ComposedConfig.from_pretrained(source, revision=revision, subfolder=subfolder, **hub_kwargs)
        if relabel or (isinstance(given, ComposedConfig) and given.members and given.id2label != config.id2label):
            raise ValueError(
                f"A composition's classes are those of its modules: {', '.join(relabel) or 'its labels'} cannot be "
                "set when loading one. Load it as it is, then add, remove or replace modules (composed.add, .remove, "
                ".replace; ComposedModel.from_modules(..., rename=...) renames them), or fine-tune a parent instead."
            )
        if not config.members:  # a repo of another model type loads as a config without members
            raise ValueError(
                f"{pretrained_model_name_or_path} holds no composed model (its config.json names no members). Load "
                "a classifier or module with AutoModelForImageClassification, or compose modules with "
                "ComposedModel.from_modules."
            )
        members = _load_members(config, source, subfolder, revision, member_kwargs)
        composed = cls(config, members)
        composed.stores_its_modules = all("subfolder" in entry for entry in config.members)
        return composed


def _load_members(
    config: ComposedConfig, source: str, subfolder: str, revision: str | None, member_kwargs: dict[str, Any]
) -> list[ModularResNetForImageClassification]:
    """The modules a composition's config names, in order: those stored inside it (its `subfolder`, if any), and
    those it points to (found where they were recorded, warned about when their weights changed since)."""
    referenced = [entry for entry in config.members if not entry.get("subfolder")]
    for entry in referenced:  # a crafted config must not name paths on this machine from a Hub repo
        confined_source(entry["source"], source)
    locate_members(referenced, source)
    members = []
    for entry in config.members:
        if entry.get("subfolder"):
            inside = confined_subfolder(source, entry["subfolder"])  # a crafted config must not leave the repo
            module = load_from_subfolder(
                source, f"{subfolder}/{inside}" if subfolder else inside, revision, member_kwargs
            )
        else:
            module = load_pinned(entry["source"], entry.get("revision"), entry["label"], member_kwargs)
            recorded = {key: entry.pop(key) for key in FINGERPRINT_KEYS.values() if key in entry}
            if recorded and not is_recorded_member(recorded, module):
                consequence = (
                    "its fit is stale: fit the composition again, or put the earlier module back"
                    if config.fit
                    else "the composition answers with it as it is now. Save the composition again to keep it, "
                    "or put the earlier module back"
                )
                logger.warning(
                    "The %r module at %s has changed since this composition was saved (its weights differ): %s.",
                    entry["label"],
                    entry["source"],
                    consequence,
                )
        members.append(module)
    return members


def _problem_type(config: PreTrainedConfig, labels: torch.Tensor | None) -> str | None:
    """The problem type transformers' classification loss will use: `config.problem_type`, or, left unset, the one
    it infers from the labels (as `transformers.loss.loss_utils.ForSequenceClassificationLoss` does). The forward
    needs it before the loss, to return the logits that problem type reads."""
    if config.problem_type is not None or labels is None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    return "single_label_classification" if labels.dtype in (torch.long, torch.int) else "multi_label_classification"


def _is_compiling() -> bool:
    """Whether torch.compile or torch.export is tracing (`torch.compiler.is_compiling`, from torch 2.3)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


@torch.inference_mode()
def collect_module_logits(
    composed: ComposedModel,
    dataset: datasets.Dataset,
    *,
    max_images: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, M, 2) module logits and (N,) label indices for `dataset`'s images of the composition's classes (a seeded
    random sample of at most `max_images` of them)."""
    image_column, label_column = find_columns(dataset)
    to_model = dataset_to_model_labels(label_names(dataset, label_column), composed.config.id2label, unknown_as=-1)
    rows = (to_model[label_ids(dataset, label_column)] >= 0).nonzero().flatten()
    if len(rows) == 0:
        raise ValueError(f"The dataset has no images of the composition's classes {composed.labels}.")
    if max_images is not None and len(rows) > max_images:
        rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:max_images]].sort().values
    batches = iterate_batches(
        dataset.select(rows.tolist()),
        composed_image_processor(composed.config),
        image_column=image_column,
        label_column=label_column,
        batch_size=batch_size,
        image_mode=image_mode(composed.config.num_channels),
        rows=rows.tolist(),
    )
    composed.eval()
    logits, labels = [], []
    for pixel_values, batch_labels in progress_bar(batches, total=-(-len(rows) // batch_size), disable=not progress):
        logits.append(composed.module_logits(pixel_values))
        labels.append(to_model[batch_labels])
    return torch.cat(logits), torch.cat(labels)
