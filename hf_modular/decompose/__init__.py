"""Decompose a trained ModularResNet classifier into one binary module per class.

    modules = hf_modular.decompose(model, dataset)          # {"cat": <module>, ...}

The data flows one way: dataset -> sample plan -> statistics pass (sharded with Accelerate) -> strategy -> modules.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import datasets
from accelerate import Accelerator

from ..data import dataset_name, dataset_split, find_columns, label_ids, label_names, load_image_dataset
from ..emissions import measure_compute
from ..evaluation import dataset_to_model_labels
from ..modeling_modular_resnet import ModularResNetForImageClassification
from .activation import ActivationStrategy, ModuleSpec
from .channel import ChannelStrategy, build_compact_modules, collect_channel_scores
from .modules import build_module, jaccard_index, label_module, masked_fraction, weights_sha256
from .sampling import plan_samples
from .statistics import collect_activity

STRATEGIES = {"activation": ActivationStrategy, "channel": ChannelStrategy}
DEFAULT_SAMPLES_PER_CLASS = 1000  # the paper's
DEFAULT_NEGATIVES_RATIO = 1.0  # the paper's 1:1
DEFAULT_SEED = 0

__all__ = ["STRATEGIES", "ActivationStrategy", "ChannelStrategy", "ModuleSpec", "decompose"]


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
    image_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 128,
    seed: int = DEFAULT_SEED,
    accelerator: Accelerator | None = None,
    progress: bool = True,
    **strategy_options: Any,
) -> dict[str, ModularResNetForImageClassification]:
    """Build one module per class of `model` from the training inputs in `dataset`.

    Args:
        model: the parent classifier; its `id2label` names must match the dataset's label names.
        dataset: a `datasets.Dataset`, or anything `load_image_dataset` takes (Hub name, parquet file, folder).
        classes: label names to build modules for (default: all of the model's classes).
        samples_per_class: own-class inputs observed per module (fewer when the class has fewer).
        negatives_ratio: negatives per own input, spread evenly over the other classes (the paper: 1.0).
        strategy: `"activation"` (the paper's method). `strategy_options` go to its class: `sites="relu"`,
            `backtrack="text"`, `delta=0.5`, `backtrack_input=False` (see `ActivationStrategy`).
        dataset_revision: the Hub dataset's branch, tag or commit to load (recorded in the modules).
        accelerator: an `accelerate.Accelerator` to shard the statistics pass across processes (default: one
            process). Every process returns the same modules.

    Returns:
        `{label: module}` in the model's class order; each module is a `ModularResNetForImageClassification` with
        two outputs (`label`, `"rest"`) whose `config.module` records its provenance.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; choose one of {list(STRATEGIES)}.")
    if model.config.is_module:
        raise ValueError(
            "This model is already a class module (its config has a `module` section); decompose its parent, "
            f"{model.config.module['parent'].get('repo_id') or model.config.module['parent'].get('path')}."
        )
    method = STRATEGIES[strategy](**strategy_options)
    device = next(model.parameters()).device  # the statistics pass moves the model; it is put back at the end
    dataset_source = dataset if not isinstance(dataset, datasets.Dataset) else None
    dataset = load_image_dataset(dataset, split=split, revision=dataset_revision)
    image_column, label_column = find_columns(dataset, image_column, label_column)
    model_labels = model.config.id2label
    names = label_names(dataset, label_column)
    if len(names) != model.config.num_labels:
        raise ValueError(
            f"The model has {model.config.num_labels} outputs but the dataset's {label_column!r} column has "
            f"{len(names)} classes. Decompose a model with the dataset it was trained on."
        )
    to_model = dataset_to_model_labels(names, model_labels)
    class_indices = _resolve_classes(classes, model_labels)
    if model.config.stem_type == "cifar":  # small-input models are decomposed at their own size, not resized
        _check_image_size(dataset, image_column, model.config.image_size)

    plan = plan_samples(
        to_model[label_ids(dataset, label_column)],
        class_indices,
        model.config.num_labels,
        samples_per_class=samples_per_class,
        negatives_ratio=negatives_ratio,
        seed=seed,
        class_names=[model_labels[i] for i in range(model.config.num_labels)],
    )
    with measure_compute() as compute:
        if isinstance(method, ChannelStrategy):
            sites = sorted({site for names in method.scored_sites(model).values() for site in names})
            scores = collect_channel_scores(
                model,
                dataset,
                plan,
                sites,
                importance=method.importance,
                image_column=image_column,
                label_column=label_column,
                batch_size=batch_size,
                accelerator=accelerator,
                progress=progress,
            )
            statistics_seconds = compute.wall_seconds_so_far()
            model = model.cpu().eval()
            compact = build_compact_modules(
                model,
                method,
                scores,
                class_indices,
                dataset,
                image_column,
                seed=seed,
                accelerator=accelerator,
                progress=progress,
            )
        else:
            activity = collect_activity(
                model,
                dataset,
                plan,
                image_column=image_column,
                label_column=label_column,
                batch_size=batch_size,
                accelerator=accelerator,
                sites=method.sites,
                progress=progress,
            )
            statistics_seconds = compute.wall_seconds_so_far()
            model = model.cpu().eval()  # modules are built and returned on the CPU
            specs = [method.build(model, activity, m, class_index) for m, class_index in enumerate(class_indices)]

    provenance = {
        "parent": _parent_provenance(model),
        "dataset": _dataset_provenance(dataset, dataset_source, split, image_column, label_column, dataset_revision),
        "method": {"strategy": method.name, **method.parameters()},
        "sampling": {"samples_per_class": samples_per_class, "negatives_ratio": negatives_ratio, "seed": seed},
        # The whole decomposition's cost (all modules, this process), and the statistics pass's share of it.
        "compute": {**compute.to_dict(), "statistics_seconds": statistics_seconds, "modules_built": len(class_indices)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hf_modular_version": _version(),
    }
    own_samples, negative_samples = plan.own.sum(0), plan.negative.sum(0)
    modules = {}
    for m, class_index in enumerate(class_indices):
        label = model_labels[class_index]
        metadata = {
            "target_label": label,
            "target_index": class_index,
            **provenance,
            "samples": {"own": int(own_samples[m]), "negative": int(negative_samples[m])},
        }
        if isinstance(method, ChannelStrategy):
            module, details = compact[m]
            modules[label] = label_module(module, label, {**metadata, "details": details})
        else:
            spec = specs[m]
            metadata.update(
                masked_fraction=masked_fraction(spec.node_keep),
                jaccard_index=jaccard_index(model, spec.node_keep),
                details=spec.details,
            )
            modules[label] = build_module(model, spec, metadata)
    model.to(device)  # the caller's model goes back where it was
    return modules


def _version() -> str:
    from .. import __version__

    return __version__


def _resolve_classes(classes: list[str] | None, model_labels: dict[int, str]) -> list[int]:
    if classes is None:
        return sorted(model_labels)
    by_name = {name: index for index, name in model_labels.items()}
    unknown = [name for name in classes if name not in by_name]
    if unknown:
        raise ValueError(f"Unknown classes {unknown}: the model's labels are {list(by_name)}.")
    if not classes:
        raise ValueError("classes=[] selects nothing; pass None for every class.")
    return [by_name[name] for name in dict.fromkeys(classes)]


def _check_image_size(dataset: datasets.Dataset, image_column: str, image_size: int) -> None:
    if len(dataset) == 0:
        raise ValueError("The dataset is empty.")
    width, height = dataset[0][image_column].size
    if (width, height) != (image_size, image_size):
        raise ValueError(
            f"The dataset's images are {width}x{height} but the model takes {image_size}x{image_size}. The "
            "statistics describe the model at its own input size: use a dataset of that size, or resize its images "
            f"first, e.g. dataset.map(lambda row: {{'{image_column}': row['{image_column}'].resize(({image_size}, "
            f"{image_size}))}})."
        )


def _parent_provenance(model: ModularResNetForImageClassification) -> dict[str, Any]:
    source = model.config.name_or_path or None
    is_local = source is None or Path(source).exists()
    return {
        "repo_id": None if is_local else source,
        "revision": getattr(model, "source_revision", None),
        "path": source if is_local else None,
        "weights_sha256": weights_sha256(model),
        "architecture": model.config.preset or "modular_resnet",
        "labels": [model.config.id2label[i] for i in range(model.config.num_labels)],
    }


def _dataset_provenance(
    dataset: datasets.Dataset,
    source: Any,
    split: str,
    image_column: str,
    label_column: str,
    dataset_revision: str | None,
) -> dict[str, Any]:
    return {
        "name_or_path": dataset_name(dataset, source),
        "split": dataset_split(dataset, split) if source is None else split,
        "revision": dataset_revision,
        "fingerprint": dataset._fingerprint,
        "image_column": image_column,
        "label_column": label_column,
        "rows": len(dataset),
    }
