"""The paper's reuse and replacement scenarios, as functions the demo and the benchmarks share.

* Reuse: a classifier for a subset of classes, composed from existing modules, against the same architecture
  trained from scratch on those classes with the same budget.
* Replacement: a parent that is weak on one class (trained with few of its examples) has that class's module
  swapped for the module of a healthy parent; the class's recall and overall accuracy before and after.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import datasets
import torch
from accelerate.utils import set_seed

from .compose import ComposedModel
from .data import find_label_column, label_ids, label_names, select_classes
from .emissions import measure_compute
from .evaluation import evaluate
from .models import ModularResNetConfig, ModularResNetForImageClassification
from .train import train


def reuse_versus_scratch(
    modules: dict[str, ModularResNetForImageClassification],
    labels: list[str],
    parent_config: ModularResNetConfig,
    train_dataset: datasets.Dataset,
    test_dataset: datasets.Dataset,
    **training: Any,
) -> dict[str, Any]:
    """Compose `labels`' modules; train the parent's architecture from scratch on those classes (`training` goes to
    `train`); measure both on the test images of those classes."""
    composed = ComposedModel.from_modules([modules[label] for label in labels])
    test_subset = select_classes(test_dataset, labels)
    composed_accuracy = evaluate(composed, test_subset, progress=False)
    config = copy.deepcopy(parent_config)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: index for index, label in enumerate(labels)}
    set_seed(training.get("seed", 0))
    scratch = ModularResNetForImageClassification(config)
    with measure_compute() as cost:
        train(scratch, select_classes(train_dataset, labels), progress=False, **training)
    scratch_accuracy = evaluate(scratch, test_subset, progress=False)
    return {
        "labels": labels,
        "images": composed_accuracy.count,
        "composed_top1": composed_accuracy.top1,
        "scratch_top1": scratch_accuracy.top1,
        "scratch_training": cost.to_dict(),
    }


def weaken(dataset: datasets.Dataset, label: str, keep: float, seed: int = 0) -> datasets.Dataset:
    """`dataset` with only a `keep` fraction of `label`'s rows (seeded), to train a parent that is weak on it."""
    label_column = find_label_column(dataset)
    index = label_names(dataset, label_column).index(label)
    rows = label_ids(dataset, label_column)
    members = (rows == index).nonzero().flatten()
    kept = members[torch.randperm(len(members), generator=torch.Generator().manual_seed(seed))][
        : max(1, round(keep * len(members)))
    ]
    selected = torch.cat([(rows != index).nonzero().flatten(), kept]).sort().values
    return dataset.select(selected.tolist())


def replacement(
    weak_modules: dict[str, ModularResNetForImageClassification],
    healthy_modules: dict[str, ModularResNetForImageClassification],
    label: str,
    test_dataset: datasets.Dataset,
) -> dict[str, Any]:
    """Compose the weak parent's modules, then replace `label`'s module by the healthy one; measure both."""
    composed = ComposedModel.from_modules(list(weak_modules.values()))
    before = evaluate(composed, test_dataset, progress=False)
    started = time.perf_counter()
    composed.replace(label, healthy_modules[label])
    replace_seconds = time.perf_counter() - started
    after = evaluate(composed, test_dataset, progress=False)
    return {
        "label": label,
        "recall_before": before.per_class[label],
        "recall_after": after.per_class[label],
        "top1_before": before.top1,
        "top1_after": after.top1,
        "replace_seconds": replace_seconds,
    }
