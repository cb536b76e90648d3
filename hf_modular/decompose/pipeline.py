"""The decomposition pipeline: dataset -> sample plan -> the strategy's statistics pass (sharded with Accelerate)
-> the strategy's modules -> labels and provenance.

    modules = hf_modular.decompose(model, dataset)          # {"cat": <module>, ...}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator, PartialState

from ..data import (
    COMMIT,
    dataset_fingerprint,
    dataset_name,
    dataset_split,
    dataset_to_model_labels,
    find_columns,
    first_image,
    is_hub_dataset,
    label_ids,
    label_names,
    load_image_dataset,
    pinned_revision,
)
from ..distributed import device_and_dtype, distributed_state, mixed_precision_of, on_main_process
from ..emissions import measure_compute
from ..models import ModularResNetConfig, ModularResNetForImageClassification
from ..models.configuration_modular_resnet import WEIGHT_RECORDS
from ..module import REST_LABEL, ModuleProvenance, weights_sha256
from ..module.provenance import DatasetRecord, MethodRecord, ParentRecord, SampleCounts, SamplingRecord
from ..validation import check_number
from ..version import __version__
from .build import label_module
from .sampling import plan_samples
from .strategies import get_strategy, strategy_among

DEFAULT_SAMPLES_PER_CLASS = 1000  # the paper's
DEFAULT_NEGATIVES_RATIO = 1.0  # the paper's 1:1
DEFAULT_SEED = 0

logger = logging.getLogger(__name__)


def decompose(
    model: ModularResNetForImageClassification,
    dataset: datasets.Dataset | str | os.PathLike,
    *,
    classes: list[str] | None = None,
    samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS,
    negatives_ratio: float = DEFAULT_NEGATIVES_RATIO,
    strategy: str = "activation",
    split: str = "train",
    dataset_revision: str | None = None,
    dataset_config: str | None = None,
    num_workers: int = 0,
    image_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 128,
    seed: int = DEFAULT_SEED,
    accelerator: Accelerator | PartialState | None = None,
    progress: bool = True,
    on_module: Callable[[str, ModularResNetForImageClassification], None] | None = None,
    **strategy_options: Any,
) -> dict[str, ModularResNetForImageClassification]:
    """Build one module per class of `model` from the training inputs in `dataset`.

    Args:
        model: the parent classifier; its `id2label` names must match the dataset's label names.
        dataset: a `datasets.Dataset`, or anything `load_image_dataset` takes (Hub name, parquet file, folder).
        classes: label names to build modules for (default: all of the model's classes).
        samples_per_class: own-class inputs observed per module (fewer when the class has fewer).
        negatives_ratio: negatives per own input, spread evenly over the other classes (the paper: 1.0).
        strategy: a registered strategy's name (`from hf_modular.decompose import STRATEGIES`): `"activation"`
            (the paper's method; options `sites`, `backtrack`, `delta`, `backtrack_input`, see
            `ActivationStrategy`) or `"channel"` (compact modules, see `ChannelStrategy`). `strategy_options` go to
            its class.
        dataset_revision: the Hub dataset's branch, tag or commit to load; the commit it resolves to is recorded.
        dataset_config: the Hub dataset's configuration (`datasets.load_dataset`'s `name`).
        num_workers: DataLoader worker processes that decode and preprocess images (0: in this process).
        accelerator: an `accelerate.Accelerator` or `PartialState` to shard the work across processes (default:
            the state `accelerate launch` / `torchrun` set up, else one process). Every process returns the same
            modules.
        on_module: called on every process with `(label, module)` as soon as that module is built, before the
            next one is (`decompose_to_directory` saves it there, so that an interrupted run keeps it). Its
            `provenance.compute` is then the cost of the run up to that module; the returned modules all hold the
            whole run's.

    Returns:
        `{label: module}` in the order of `classes` (default: the model's class order); each module is a
        `ModularResNetForImageClassification` with two outputs (`label`, `"rest"`) whose `config.module` records
        its provenance.
    """
    check_number("samples_per_class", samples_per_class, minimum=1, integer=True)
    check_number("negatives_ratio", negatives_ratio, minimum=0)
    check_number("batch_size", batch_size, minimum=1, integer=True)
    check_number("num_workers", num_workers, minimum=0, integer=True)
    method = get_strategy(strategy, **strategy_options)
    refuse_a_module(model)
    class_indices = resolve_classes(classes, model.config.id2label)  # before the data is read
    state = distributed_state(accelerator)
    # The passes run on this process's device (as `accelerator.prepare` would place the model); the parent and the
    # modules are returned where the parent was. Modules keep the parent's dtype.
    device, dtype = device_and_dtype(model)
    # The whole decomposition's cost, from reading the data to the labelled modules (all modules, this process),
    # and the statistics pass's share of it.
    with measure_compute() as compute:
        dataset_source = dataset if isinstance(dataset, (str, os.PathLike)) else None
        given_revision = dataset_revision
        # One commit, read and recorded by every process.
        dataset_revision = on_main_process(lambda: pinned_revision(dataset_source, given_revision), state)
        dataset = load_image_dataset(dataset, split=split, revision=dataset_revision, config_name=dataset_config)
        image_column, label_column = find_columns(dataset, image_column, label_column)
        model_labels = model.config.id2label
        names = label_names(dataset, label_column)
        to_model = dataset_to_model_labels(names, model_labels)  # a dataset of some of the model's classes will do
        model_ids = to_model[label_ids(dataset, label_column)]
        _check_class_coverage(model_ids, class_indices, model_labels, split, state)
        if model.config.stem_type == "cifar":  # small-input models are decomposed at their own size, not resized
            _check_image_size(dataset, image_column, model.config.image_size)

        plan = plan_samples(
            model_ids,
            class_indices,
            model.config.num_labels,
            samples_per_class=samples_per_class,
            negatives_ratio=negatives_ratio,
            seed=seed,
            class_names=[model_labels[i] for i in range(model.config.num_labels)],
        )
        statistics_started = compute.wall_seconds_so_far()
        observations = method.observe(
            model,
            dataset,
            plan,
            image_column=image_column,
            label_column=label_column,
            batch_size=batch_size,
            state=state,
            progress=progress,
            num_workers=num_workers,
        )
        statistics_seconds = compute.wall_seconds_so_far() - statistics_started
        model.eval()  # modules are built where the statistics pass ran, and returned where the parent was
        built = method.build(  # one module at a time, so that each can be handed on (saved) as soon as it exists
            model,
            observations,
            plan,
            dataset=dataset,
            image_column=image_column,
            seed=seed,
            state=state,
            progress=progress,
        )
        common = {
            "parent": _parent_record(model),
            "dataset": _dataset_record(
                dataset, dataset_source, split, image_column, label_column, dataset_revision, dataset_config
            ),
            "method": MethodRecord(method.name, method.parameters()),
            "sampling": SamplingRecord(samples_per_class, negatives_ratio, seed),
            "hf_modular_version": __version__,
        }
        cost = {
            "statistics_seconds": statistics_seconds,
            # The activation strategy's sign test reads values computed in this dtype and autocast.
            "dtype": str(dtype).removeprefix("torch."),
            "mixed_precision": mixed_precision_of(state),
        }
        own_samples, negative_samples = plan.own.sum(0), plan.negative.sum(0)
        modules = {}
        for m, (class_index, (module, details)) in enumerate(zip(class_indices, built, strict=True)):
            label = model_labels[class_index]
            provenance = ModuleProvenance(
                target_label=label,
                target_index=class_index,
                samples=SampleCounts(int(own_samples[m]), int(negative_samples[m])),
                details=details,
                # Until the run ends, the cost of the modules built so far: what a module handed on now (and kept
                # by an interrupted run) records. Replaced below by the whole run's once every module is built.
                compute={**compute.so_far(), **cost, "modules_built": m + 1},
                created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **common,
            )
            modules[label] = label_module(module.to(device), provenance)
            if on_module is not None:
                on_module(label, modules[label])
    # The whole decomposition's cost, from reading the data to the last labelled module (all modules, this process;
    # what `on_module` does, such as saving them, included).
    whole_run = {**compute.to_dict(), **cost, "modules_built": len(class_indices)}
    for module in modules.values():
        info = module.config.provenance
        info.compute = whole_run
        module.config.provenance = info
    model.to(device)  # the caller's model goes back where it was
    return modules


def _check_class_coverage(
    model_ids: torch.Tensor, class_indices: list[int], model_labels: dict[int, str], split: str, state: PartialState
) -> None:
    """Refuse a dataset without images of a class to decompose (all such classes named at once), and warn when it
    lacks other classes of the model: their images are what the modules learn to answer "rest" to.

    `model_ids`: each row's class as the model's index (-1: a class the model does not have)."""
    counts = torch.bincount(model_ids[model_ids >= 0], minlength=len(model_labels))
    absent = [model_labels[i] for i in range(len(model_labels)) if counts[i] == 0]
    unbuildable = [model_labels[i] for i in class_indices if counts[i] == 0]
    if unbuildable:
        more = f" and {len(unbuildable) - 10} more" if len(unbuildable) > 10 else ""
        raise ValueError(
            f"The dataset (split {split!r}) has no images of {', '.join(map(repr, unbuildable[:10]))}{more}, so "
            "no module of those can be built. Name the classes to decompose among those it has (classes=[...]; "
            "--classes a,b), or use a split that has them all."
        )
    if absent and state.is_main_process:
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        logger.warning(
            "The dataset has no images of %s: the modules are told apart only from the classes it has images "
            "of, so they compose worse with modules of the others. Decompose on data of every class the "
            "modules will meet.",
            ", ".join(map(repr, absent[:5])) + more,
        )


def refuse_a_module(model: ModularResNetForImageClassification) -> None:
    """A class module is not decomposed again: raise ValueError naming its parent."""
    if model.config.is_module:
        parent = model.config.provenance.parent
        raise ValueError(
            "This model is already a class module (its config has a `module` section); decompose its parent, "
            f"{parent.repo_id or parent.path}."
        )


def resolve_classes(classes: list[str] | None, model_labels: dict[int, str]) -> list[int]:
    """The model class indices of the `classes` asked for (all of them for None)."""
    if isinstance(classes, str):
        raise TypeError(f"classes takes a list of label names, e.g. {classes.split(',')!r}, not one string.")
    if classes is None:
        return sorted(model_labels)
    by_name = {name: index for index, name in model_labels.items()}
    unknown = [name for name in classes if name not in by_name]
    if unknown:
        raise ValueError(f"Unknown classes {unknown}: the model's labels are {list(by_name)}.")
    if not classes:
        raise ValueError("classes=[] selects nothing; pass None for every class.")
    return [by_name[name] for name in dict.fromkeys(classes)]


def planned_modules(
    model: ModularResNetForImageClassification,
    dataset: datasets.Dataset | str | os.PathLike,
    *,
    classes: list[str] | None = None,
    samples_per_class: int = DEFAULT_SAMPLES_PER_CLASS,
    negatives_ratio: float = DEFAULT_NEGATIVES_RATIO,
    strategy: str = "activation",
    split: str = "train",
    dataset_config: str | None = None,
    seed: int = DEFAULT_SEED,
    **options: Any,
) -> dict[str, ModularResNetConfig]:
    """`{label: config}` of the modules `decompose(model, dataset, ...)` would build, without building them: what
    names each module's repo (its labels, parent and strategy) and what makes it this module (its provenance's class,
    parent, method, sampling and data), from which `hf-modular decompose --push-to` checks its repos before a
    decomposition is spent. Nothing else is known yet: the architecture fields are the parent's (a channel module
    is smaller, an activation module has masks), and the sample counts are zero.

    `dataset` is what `decompose` takes; `options` are its other keyword arguments: a strategy's options and
    `dataset_revision` are read, the rest (batch size, workers, ...) do not change a module and are ignored."""
    refuse_a_module(model)
    class_indices = resolve_classes(classes, model.config.id2label)
    method = strategy_among(strategy, options)
    source = dataset if isinstance(dataset, (str, os.PathLike)) else None
    revision = pinned_revision(source, options.get("dataset_revision"))  # the commit `decompose` would read now
    if is_hub_dataset(source) and not (revision and COMMIT.fullmatch(revision)):
        raise ConnectionError(
            f"The Hub could not say which commit of the dataset {source} would be read, so the modules cannot be told "
            "apart from those published. Try again when the Hub can be reached."
        )
    identity = {
        "parent": _parent_record(model),
        "dataset": DatasetRecord(**_dataset_identity(dataset, source, split, dataset_config), revision=revision),
        "method": MethodRecord(method.name, method.parameters()),
        "sampling": SamplingRecord(samples_per_class, negatives_ratio, seed),
        "samples": SampleCounts(0, 0),
        "compute": {},
    }
    planned = {}
    for class_index in class_indices:
        label = model.config.id2label[class_index]
        config = ModularResNetConfig.from_dict({**model.config.to_dict(), **WEIGHT_RECORDS})
        config.id2label, config.label2id = {0: label, 1: REST_LABEL}, {label: 0, REST_LABEL: 1}
        config.provenance = ModuleProvenance(target_label=label, target_index=class_index, **identity)
        planned[label] = config
    return planned


def _check_image_size(dataset: datasets.Dataset, image_column: str, image_size: int) -> None:
    if len(dataset) == 0:
        raise ValueError("The dataset is empty.")
    width, height = first_image(dataset, image_column).size
    if (width, height) != (image_size, image_size):
        raise ValueError(
            f"The dataset's images are {width}x{height} but the model takes {image_size}x{image_size}. The "
            "statistics describe the model at its own input size: use a dataset of that size, or resize its images "
            f"first, e.g. dataset.map(lambda row: {{'{image_column}': row['{image_column}'].resize(({image_size}, "
            f"{image_size}))}})."
        )


def _parent_record(model: ModularResNetForImageClassification) -> ParentRecord:
    source = model.config.name_or_path or None
    is_local = source is None or Path(source).exists()
    return ParentRecord(
        weights_sha256=weights_sha256(model),
        architecture=model.config.preset or "modular_resnet",
        labels=[model.config.id2label[i] for i in range(model.config.num_labels)],
        repo_id=None if is_local else source,
        revision=getattr(model, "source_revision", None),
        # A local parent is named by its directory's name only: provenance is published with the module.
        path=Path(source).resolve().name if source and is_local else None,
        origin=model.config.origin,
    )


def _dataset_record(
    dataset: datasets.Dataset,
    source: Any,
    split: str,
    image_column: str,
    label_column: str,
    dataset_revision: str | None,
    dataset_config: str | None,
) -> DatasetRecord:
    return DatasetRecord(
        **_dataset_identity(dataset, source, split, dataset_config),
        revision=dataset_revision,  # for a Hub dataset, the commit its branch or tag stood for when it was read
        fingerprint=dataset_fingerprint(dataset),
        image_column=image_column,
        label_column=label_column,
        rows=len(dataset),
    )


def _dataset_identity(dataset: Any, source: Any, split: str, dataset_config: str | None) -> dict[str, Any]:
    """What a module records of its data's name, split and configuration (`source`: the name or path given)."""
    return {
        "name_or_path": dataset_name(dataset, source),
        "split": dataset_split(dataset, split) if source is None else split,
        "config_name": dataset_config if is_hub_dataset(source) else None,  # local data has no configurations
    }
