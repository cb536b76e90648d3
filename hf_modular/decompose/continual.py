"""Continuous learning (the method document, section 5): before modules from different datasets are composed,
re-run tangling identification for each one with examples of the other modules' classes as negatives.

No gradient step: the parent's values are observed again (the module holds the parent's weights; its masks are
lifted for the observation), any node the new negatives activate leaves the map, and the concern modularization
steps (residual consistency, MC-BLN, MC-BI) are applied again as the module's recorded method says.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from accelerate import Accelerator, PartialState
from datasets import Dataset

from ..data import (
    dataset_fingerprint,
    dataset_name,
    find_columns,
    find_label_column,
    label_ids,
    label_names,
    load_image_dataset,
    only_columns,
)
from ..distributed import device_and_dtype, distributed_state
from ..models import ModularResNetForImageClassification
from ..module import jaccard_index, masked_fraction
from .build import build_module, label_module
from .sampling import SamplePlan, even_share
from .statistics import collect_activity
from .strategies import STRATEGIES, strategy_of

DatasetLike = Dataset | str | os.PathLike


@contextmanager
def masks_lifted(model: ModularResNetForImageClassification) -> Iterator[ModularResNetForImageClassification]:
    """Run `model` as its parent: every site's mask is set aside inside the block and put back after it."""
    sites = {**model.sites("relu"), **model.sites("conv")}
    saved = {name: site.mask for name, site in sites.items()}
    try:
        for site in sites.values():
            site.mask = None
        yield model
    finally:
        for name, site in sites.items():
            site.mask = saved[name]


def continuous_learning(
    modules: Sequence[ModularResNetForImageClassification],
    datasets: Sequence[DatasetLike] | DatasetLike,
    *,
    split: str = "train",
    negatives_ratio: float = 1.0,
    seed: int = 0,
    batch_size: int = 128,
    accelerator: Accelerator | PartialState | None = None,
    progress: bool = True,
    image_column: str | None = None,
    label_column: str | None = None,
) -> list[ModularResNetForImageClassification]:
    """Adapt modules for composition across datasets; returns new modules (the inputs are not changed).

    Args:
        modules: class modules, possibly from different parents and datasets.
        datasets: for each module, the dataset holding examples of its class (by its label name); or one dataset
            for all. Module i's negatives are examples of every other module's class, taken from that module's
            dataset: `negatives_ratio` x module i's own sample count, spread evenly over the other classes.
        image_column, label_column: the columns to read in every dataset (default: each one's Image and ClassLabel
            column).
    """
    if len(modules) < 2:
        raise ValueError("Continuous learning needs at least two modules: each one learns from the others' classes.")
    given = list(datasets) if isinstance(datasets, Sequence) and not isinstance(datasets, str) else None
    given = given or [datasets] * len(modules)
    sources = [only_columns(load_image_dataset(d, split=split), image_column, label_column) for d in given]
    names = [
        dataset_name(loaded, None if isinstance(d, Dataset) else d) for loaded, d in zip(sources, given, strict=True)
    ]
    if len(sources) != len(modules):
        raise ValueError(f"Got {len(modules)} modules but {len(sources)} datasets; give one per module, or one.")
    for module in modules:
        if not module.config.is_module:
            raise ValueError("Continuous learning adapts class modules; a plain classifier was given.")
        info = module.config.provenance
        known = STRATEGIES.get(info.method.strategy)
        if known is None or not known.supports_continuous_learning:
            raise ValueError(
                f"Continuous learning re-identifies the nodes a module masks; the {info.target_label!r} module was "
                f"built by the {info.method.strategy!r} strategy, whose modules have no masks to re-identify. "
                "Compose it as it is."
            )
    state = distributed_state(accelerator)
    shuffled = [_class_rows(module, source, seed) for module, source in zip(modules, sources, strict=True)]
    return [
        _relearn(i, modules, sources, names, shuffled, negatives_ratio, seed, batch_size, state, progress)
        for i in range(len(modules))
    ]


def _class_rows(module: ModularResNetForImageClassification, dataset: Dataset, seed: int) -> torch.Tensor:
    """The rows of `dataset` labelled with the module's class, in a seeded random order."""
    label_column = find_label_column(dataset)
    label = module.config.provenance.target_label
    names = label_names(dataset, label_column)
    if label not in names:
        raise ValueError(f"The dataset given for the {label!r} module has no class {label!r}; its classes: {names}.")
    rows = (label_ids(dataset, label_column) == names.index(label)).nonzero().flatten()
    return rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))]


def _relearn(
    index: int,
    modules: Sequence[ModularResNetForImageClassification],
    sources: list[Dataset],
    names: list[str | None],
    shuffled: list[torch.Tensor],
    negatives_ratio: float,
    seed: int,
    batch_size: int,
    state: Accelerator | PartialState,
    progress: bool,
) -> ModularResNetForImageClassification:
    module = modules[index]
    info = module.config.provenance
    strategy = strategy_of(info.method)
    others = [j for j in range(len(modules)) if j != index]
    wanted = round(negatives_ratio * info.samples.own)
    home, _ = device_and_dtype(module)  # the passes run on this process's device; the module goes back after them
    # Masks are decided on the CPU, where the statistics pass returns its maps.
    observed = {
        name: (site.mask.to("cpu", copy=True) if site.mask is not None else torch.ones(shape, dtype=torch.bool))
        for (name, site), shape in zip(
            module.sites(strategy.sites).items(), module.site_shapes(strategy.sites).values(), strict=True
        )
    }
    negatives = {}
    for position, j in enumerate(others):
        quota = min(even_share(wanted, len(others), position), len(shuffled[j]))
        rows = shuffled[j][:quota]
        negatives[modules[j].config.provenance.target_label] = len(rows)
        if len(rows) == 0:
            continue
        plan = SamplePlan.from_usage(
            rows, torch.zeros(len(rows), 1, dtype=torch.bool), torch.ones(len(rows), 1, dtype=torch.bool), [0]
        )
        image_column, label_column = find_columns(sources[j])
        with masks_lifted(module):
            activity = collect_activity(
                module,
                sources[j],
                plan,
                image_column=image_column,
                label_column=label_column,
                batch_size=batch_size,
                state=state,
                sites=strategy.sites,
                progress=progress,
            )
        for name in observed:
            observed[name] |= activity.negative[name][0]
    with masks_lifted(module):
        spec = strategy.modularize(
            module, observed, module.fc.weight.detach(), module.fc.bias.detach(), 0, module.config.head_type
        )
    # The old evaluation describes the module before it changed: drop it, and keep the decomposition's cost record.
    info.evaluation = None
    info.details = {
        **spec.details,
        "masked_fraction": masked_fraction(spec.node_keep),
        "jaccard_index": jaccard_index(module, spec.node_keep),
    }
    info.continuous_learning = {
        "negatives": negatives,
        "negative_datasets": {
            modules[j].config.provenance.target_label: {
                "name_or_path": names[j],
                "fingerprint": dataset_fingerprint(sources[j]),
            }
            for j in others
        },
        "negatives_ratio": negatives_ratio,
        "seed": seed,
        "masked_fraction_before": module.config.provenance.details["masked_fraction"],
    }
    adapted = build_module(module, spec.keep, spec.head_weight, spec.head_bias, head_type=spec.head_type)
    module.to(home)
    return label_module(adapted.to(home), info)


__all__ = ["continuous_learning", "masks_lifted"]
