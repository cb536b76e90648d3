"""Top-1 / top-5 accuracy of a classifier on a labelled image dataset, data-parallel under `accelerate launch`.

Each process evaluates a contiguous share of the rows and the counts are summed over processes, so N processes give
exactly one process's numbers (no padding, no duplicated rows). Inputs follow the model's device and dtype.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import datasets
import torch

from .compose import ComposedModel, ExecutionPlan, composed_image_processor, own_class_probabilities, top_k, vote
from .console import progress_bar
from .data import (
    dataset_fingerprint,
    dataset_to_model_labels,
    find_columns,
    first_image,
    fixed_input_size,
    iterate_batches,
    label_names,
    require_dataset,
)
from .distributed import (
    DistributedState,
    autocast,
    concat_over_processes,
    distributed_state,
    split_rows,
    sum_over_processes,
    to_model,
    warn_if_off_the_process_device,
)
from .models import ModularResNetForImageClassification, image_mode, image_processor_for
from .module import own_vs_rest_quality
from .validation import check_number

logger = logging.getLogger(__name__)
_RESIZES_SAID: set[tuple[str, int]] = set()  # (dataset fingerprint, model size): said once, not after every epoch


@dataclass
class Accuracy:
    """Accuracy over `count` examples; `per_class` maps label name -> recall on that class."""

    top1: float
    top5: float
    count: int
    per_class: dict[str, float] = field(default_factory=dict)


@torch.inference_mode()
def evaluate(
    model: ModularResNetForImageClassification | ComposedModel,
    dataset: datasets.Dataset,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 256,
    state: DistributedState | None = None,
    progress: bool = True,
    num_workers: int = 0,
) -> Accuracy:
    """Evaluate a classifier or a composed model on `dataset`, preprocessing with the model's own image processor.

    A composed model is measured on the rows of its own classes (a 2-class composition on the 2 classes' images);
    a classifier on every row, and a label it does not know is an error. The rows are shared between the processes
    of `state` (default: this process's `PartialState`); every process returns the same result.
    """
    check_number("batch_size", batch_size, minimum=1, integer=True)
    check_number("num_workers", num_workers, minimum=0, integer=True)
    state = distributed_state(state)
    dataset = require_dataset(dataset)
    image_column, label_column = find_columns(dataset, image_column, label_column)
    composed = isinstance(model, ComposedModel)
    if getattr(model.config, "is_module", False):
        label = model.config.provenance.target_label
        raise ValueError(
            f"This is the {label!r} module: it answers {label!r} or 'rest', so it has no top-1 of its own. Its "
            "quality alone is measured by decomposing with evaluation data (decompose_to_directory(eval_dataset=...), "
            "`hf-modular decompose ... --eval-split`; it is in its card); to evaluate it among other classes, compose "
            "it with their modules and evaluate the composition."
        )
    names = label_names(dataset, label_column)
    to_model_labels = dataset_to_model_labels(names, model.config.id2label, unknown_as=-1 if composed else None)
    unmatched = sorted(set(model.config.id2label.values()) - set(names))
    if composed and unmatched and state.is_main_process:  # a class named otherwise would go unmeasured, unsaid
        logger.warning(
            "The dataset has no label named %s, so the composition's modules of those are measured only as rivals, "
            "never on their own images. If the dataset names them otherwise, rename its labels (or the modules': "
            "ComposedModel.from_modules(..., rename=...)) to match.",
            ", ".join(map(repr, unmatched)),
        )
    processor = composed_image_processor(model.config) if composed else image_processor_for(model.config)
    num_labels = model.config.num_labels
    tallies = torch.zeros(3, num_labels, dtype=torch.long)  # top-1 hits, top-5 hits, images; per class
    model.eval()
    warn_if_off_the_process_device(model, state, "evaluate")
    if state.is_main_process and not composed:
        _say_when_images_are_resized(dataset, image_column, fixed_input_size(model.config))
    with split_rows(state, len(dataset)) as rows:
        shard = dataset.select(rows)
    batches = iterate_batches(
        shard,
        processor,
        image_column=image_column,
        label_column=label_column,
        batch_size=batch_size,
        image_mode=image_mode(model.config.num_channels),
        rows=rows,
        num_workers=num_workers,
    )
    batches = _progress(batches, len(shard), batch_size, state, progress)
    for pixel_values, labels in batches:
        labels = to_model_labels[labels]
        known = labels >= 0
        if not known.any():
            continue
        pixel_values, labels = pixel_values[known], labels[known]
        with autocast(state):  # a composition moves its inputs itself: each member takes its own device and dtype
            logits = model(pixel_values if composed else to_model(pixel_values, model)).logits
        top = logits.topk(min(5, num_labels), dim=1).indices.cpu()
        tallies[0] += torch.bincount(labels[top[:, 0] == labels], minlength=num_labels)
        tallies[1] += torch.bincount(labels[(top == labels[:, None]).any(1)], minlength=num_labels)
        tallies[2] += torch.bincount(labels, minlength=num_labels)
    hits_top1, hits_top5, totals = sum_over_processes(tallies, state)
    count = int(totals.sum())
    if count == 0:
        raise ValueError("No image of the dataset has one of the model's labels: nothing to evaluate.")
    per_class = {model.config.id2label[i]: float(hits_top1[i] / totals[i]) for i in range(num_labels) if totals[i] > 0}
    return Accuracy(float(hits_top1.sum() / count), float(hits_top5.sum() / count), count, per_class)


def _say_when_images_are_resized(dataset: datasets.Dataset, image_column: str, size: int | None) -> None:
    """Evaluation resizes images of another size, as transformers' pipeline does, where a decomposition refuses them
    (its statistics describe the model at its own input size): say so, from the first image."""
    if size is None or len(dataset) == 0:
        return
    try:
        first = first_image(dataset, image_column)
    except (ValueError, TypeError):
        return  # the evaluation itself names the row that cannot be decoded
    found = getattr(first, "size", None)
    if not isinstance(found, tuple) or found == (size, size):
        return
    said = (dataset_fingerprint(dataset), size)
    if said not in _RESIZES_SAID:
        _RESIZES_SAID.add(said)
        width, height = found
        logger.warning(
            "The images are %dx%d (the first one) and the model takes %dx%d: its image processor resizes them, as "
            "transformers' pipeline would. Decomposing refuses such images; resize the dataset to measure the "
            "model on the input its modules will see.",
            width,
            height,
            size,
            size,
        )


@dataclass
class CompositionAccuracy:
    """The parent and its composed modules measured on the same images.

    `module_binary_accuracy` maps label -> share of images where the module's own/rest decision was right (the
    accuracy of its `own_vs_rest` quality).
    `own_vs_rest` maps label -> {"module": quality, "parent": quality}: each module's own decision and the parent's
    own one-vs-rest decision for that class (softmax probability > 0.5), as `own_vs_rest_quality` measures them.
    `parent_among_classes`: the parent choosing among the modules' classes only (its other logits left out), the
    fair comparison for modules of some of its classes; the same as `parent` when there is a module per class.
    """

    parent: Accuracy
    composed: Accuracy
    module_binary_accuracy: dict[str, float]
    own_vs_rest: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    parent_among_classes: Accuracy | None = None


@torch.inference_mode()
def evaluate_composition(
    parent: ModularResNetForImageClassification,
    modules: dict[str, ModularResNetForImageClassification],
    dataset: datasets.Dataset,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    batch_size: int = 256,
    state: DistributedState | None = None,
    progress: bool = True,
    num_workers: int = 0,
) -> CompositionAccuracy:
    """Top-1/top-5 of the parent and of the modules composed by the paper's vote, plus each module's binary accuracy.

    Images whose label has no module are skipped, so a composition of a subset of classes is measured on those classes.
    Data-parallel over the processes of `state`, as `evaluate`.
    """
    check_number("batch_size", batch_size, minimum=1, integer=True)
    check_number("num_workers", num_workers, minimum=0, integer=True)
    state = distributed_state(state)
    dataset = require_dataset(dataset)
    image_column, label_column = find_columns(dataset, image_column, label_column)
    to_model_labels = dataset_to_model_labels(label_names(dataset, label_column), parent.config.id2label)
    module_classes = torch.tensor([modules[label].config.provenance.target_index for label in modules])
    members = [module.eval() for module in modules.values()]
    shared = ExecutionPlan(members, [0] * len(members))  # every module reads the parent's input
    parent.eval()
    warn_if_off_the_process_device(parent, state, "evaluate_composition")
    ranks = min(5, parent.config.num_labels), min(5, len(members))
    # Per batch, the classes each answer ranks first (or first k): the parent among all its classes and among the
    # modules' classes only, and the composition (top-1 by the paper's vote, top-k by own-class probability); and each
    # module's and the parent's probability of the module's class, (B, M).
    answers: dict[str, list[torch.Tensor]] = {key: [] for key in ("parent", "among", "composed_top1", "composed")}
    module_probabilities, parent_probabilities, seen_labels = [], [], []
    with split_rows(state, len(dataset)) as rows:
        shard = dataset.select(rows)
    batches = iterate_batches(
        shard,
        image_processor_for(parent.config),
        image_column=image_column,
        label_column=label_column,
        batch_size=batch_size,
        image_mode=image_mode(parent.config.num_channels),
        rows=rows,
        num_workers=num_workers,
    )
    batches = _progress(batches, len(shard), batch_size, state, progress)
    for pixel_values, labels in batches:
        labels = to_model_labels[labels]
        keep = torch.isin(labels, module_classes)
        pixel_values, labels = pixel_values[keep], labels[keep]
        if len(labels) == 0:
            continue
        with autocast(state):
            parent_logits = parent(to_model(pixel_values, parent)).logits.float().cpu()
            module_logits = shared([to_model(pixel_values, member) for member in members]).float().cpu()
        answers["parent"].append(parent_logits.topk(ranks[0], dim=1).indices)
        answers["among"].append(module_classes[parent_logits[:, module_classes].topk(ranks[1], dim=1).indices])
        answers["composed_top1"].append(module_classes[vote(module_logits)][:, None])
        answers["composed"].append(module_classes[top_k(module_logits)])
        module_probabilities.append(own_class_probabilities(module_logits))
        parent_probabilities.append(parent_logits.softmax(dim=1)[:, module_classes])
        seen_labels.append(labels)
    widths = {"parent": ranks[0], "among": ranks[1], "composed_top1": 1, "composed": ranks[1]}
    answers = {key: _concat(parts, (widths[key],), torch.long, state) for key, parts in answers.items()}
    seen_labels = _concat(seen_labels, (), torch.long, state)
    module_probabilities, parent_probabilities = (
        _concat(parts, (len(modules),), torch.float32, state) for parts in (module_probabilities, parent_probabilities)
    )
    if len(seen_labels) == 0:
        raise ValueError("No image of the dataset belongs to a module's class: nothing to evaluate.")

    def accuracy(top1: torch.Tensor, top: torch.Tensor) -> Accuracy:
        return _accuracy(top1[:, 0], top, seen_labels, dict(zip(modules, module_classes.tolist(), strict=True)))

    truth = seen_labels[:, None] == module_classes[None, :]  # (N, M): image n is of module m's class
    own_vs_rest = {
        label: {
            "module": own_vs_rest_quality(module_probabilities[:, m], truth[:, m]),
            "parent": own_vs_rest_quality(parent_probabilities[:, m], truth[:, m]),
        }
        for m, label in enumerate(modules)
    }
    return CompositionAccuracy(
        parent=accuracy(answers["parent"], answers["parent"]),
        composed=accuracy(answers["composed_top1"], answers["composed"]),
        module_binary_accuracy={label: quality["module"]["accuracy"] for label, quality in own_vs_rest.items()},
        own_vs_rest=own_vs_rest,
        parent_among_classes=accuracy(answers["among"], answers["among"]),
    )


def _concat(parts: list[torch.Tensor], shape: tuple[int, ...], dtype: torch.dtype, state: DistributedState):
    """A process's per-batch tensors, concatenated over its batches and then over every process (rank order)."""
    return concat_over_processes(torch.cat(parts) if parts else torch.empty(0, *shape, dtype=dtype), state)


def _accuracy(top1: torch.Tensor, top: torch.Tensor, labels: torch.Tensor, classes: dict[str, int]) -> Accuracy:
    """(N,) first answers and (N, k) ranked answers against (N,) labels: top-1, top-k, and each class's recall (the
    share of its images answered right first), for the classes in `classes` (label -> index) that have images."""
    right = top1 == labels
    recalls = {
        label: right[labels == index].float().mean().item()
        for label, index in classes.items()
        if (labels == index).any()
    }
    top_k_hits = (top == labels[:, None]).any(dim=1)
    return Accuracy(right.float().mean().item(), top_k_hits.float().mean().item(), len(labels), recalls)


def _progress(batches, rows: int, batch_size: int, state: DistributedState, progress: bool):
    """One bar, on the main process, over its share of the rows."""
    return progress_bar(
        batches, desc="evaluation", total=-(-rows // batch_size), disable=not progress or not state.is_main_process
    )
